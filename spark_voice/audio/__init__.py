"""Audio helpers: decode/encode (soundfile), resample (soxr), VAD (silero ONNX), devices (lazy)."""

from .io import FORMATS, atomic_write_bytes, encode, encoded_rate, load_audio, resample, write_audio

__all__ = ["FORMATS", "atomic_write_bytes", "encode", "encoded_rate", "load_audio", "resample", "write_audio"]
