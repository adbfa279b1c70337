"""Runs spark-voice's Fish Speech adapter on the REAL fish-speech code, inside the fish venv.

    PYTHONPATH=<repo> .cache/fish-venv/bin/python tests/fish_driver.py CKPT_DIR WORK_DIR OUT.json

tests/test_fish_real.py starts it (one process: fish-speech's imports and the model load are paid
once) and asserts on the JSON it writes: one entry per scenario, each either the measured facts or
{"error": type, "message": ...}. CKPT_DIR is a tiny random-weight checkpoint in the S1 mini layout
(tests/fish_tiny_checkpoint.py, codec config modded_dac_vq_tiny); WORK_DIR is a scratch folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import soundfile as sf

CODEC_CONFIG = "modded_dac_vq_tiny"
GEN = dict(max_new_tokens=12)  # random weights: keep every request short


def tone(seconds: float, sr: int, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * sr), dtype=np.float32) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_references(root: Path) -> Path:
    refs = root / "references"
    shutil.rmtree(refs, ignore_errors=True)
    for name, audio, text_name, text, sr in [("alice", "alice.wav", "alice.lab", "こんにちは、アリスです。", 16000),
                                            ("bob", "sample.flac", "sample.txt", "Hi, this is Bob speaking.", 22050)]:
        d = refs / name
        d.mkdir(parents=True)
        sf.write(d / audio, tone(0.6, sr, 300.0), sr)
        (d / text_name).write_text(text, encoding="utf-8")
    bad = refs / "broken"
    bad.mkdir()
    (bad / "voice.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio")
    (bad / "voice.txt").write_text("A broken reference.", encoding="utf-8")
    return refs


def chunks_info(chunks, t0: float, stamps: list[float]) -> dict:
    return {"n": len(chunks), "rates": sorted({c.sample_rate for c in chunks}),
            "samples": [int(len(c.samples)) for c in chunks],
            "finite": bool(all(np.isfinite(c.samples).all() for c in chunks)),
            "peak": float(max((float(np.abs(c.samples).max()) for c in chunks if len(c.samples)), default=0.0)),
            "at_s": [round(s - t0, 3) for s in stamps]}


def scenario(out: dict, name: str):
    def wrap(fn):
        t0 = time.monotonic()
        try:
            out[name] = fn() or {}
        except BaseException as exc:  # recorded for the test to assert on
            out[name] = {"error": type(exc).__name__, "message": str(exc),
                         "trace": traceback.format_exc()[-3000:]}
        out[name]["seconds"] = round(time.monotonic() - t0, 3)
        return fn
    return wrap


def main(ckpt: Path, work: Path, out_path: Path) -> None:
    import torch

    from spark_voice.audio.io import encode
    from spark_voice.backends.tts_fish import FishTTS
    from spark_voice.errors import AudioError

    torch.manual_seed(0)
    work.mkdir(parents=True, exist_ok=True)
    refs = make_references(work)
    out: dict = {"torch": torch.__version__}
    try:
        import fish_fake  # tests/ is this script's folder

        out["signatures"] = fish_fake.describe()  # of the REAL fish_speech, for the fake's check
    except Exception as exc:
        out["signatures"] = {"error": type(exc).__name__, "message": str(exc)}
    tts = FishTTS(ckpt, device="cpu", reference_dir=refs, threads=2, codec_config=CODEC_CONFIG,
                  load_timeout=300, **GEN)

    @scenario(out, "load")
    def _():
        tts.load()
        import fish_speech.models.text2semantic.inference as t2s

        info = tts.info()
        return {"voices": {v.name: v.language for v in tts.voices()}, "sample_rate": tts.sample_rate,
                "codec_rate": int(tts._engine.decoder_model.sample_rate), "warnings": info.warnings,
                "device": tts.device, "endpoint": tts.endpoint, "fish_file": t2s.__file__,
                "engine": type(tts._engine).__module__ + "." + type(tts._engine).__name__}

    # count the engine's requests as they are made, to see when the first chunk comes
    calls: list[str] = []
    if tts._engine is not None:
        real_inference = tts._engine.inference

        def counting(req):
            calls.append(req.text)
            out.setdefault("requests", []).append({"text": req.text, "streaming": req.streaming,
                                                   "references": len(req.references),
                                                   "top_p": req.top_p, "temperature": req.temperature,
                                                   "repetition_penalty": req.repetition_penalty,
                                                   "chunk_length": req.chunk_length,
                                                   "max_new_tokens": req.max_new_tokens})
            return real_inference(req)

        tts._engine.inference = counting

    @scenario(out, "default_voice_streaming")
    def _():
        text = "Hello there. How are you today? I am fine."
        t0 = time.monotonic()
        chunks, stamps, requests_at_first = [], [], None
        for c in tts.synthesize(text, voice="default"):
            stamps.append(time.monotonic())
            if requests_at_first is None:
                requests_at_first = len(calls)
            chunks.append(c)
        r = chunks_info(chunks, t0, stamps)
        r.update(requests_at_first_chunk=requests_at_first, requests_total=len(calls),
                 sentences=calls[-len(calls):])
        # through our pipeline's encoder, as the server sends it
        audio = chunks[0]
        r["encoded"] = {fmt: [len(encode(audio, fmt, 48000 if fmt == "opus" else 24000)[0]),
                              encode(audio, fmt, 48000 if fmt == "opus" else 24000)[1]]
                        for fmt in ("opus", "wav", "pcm")}
        return r

    @scenario(out, "reference_voices")
    def _():
        res = {}
        for voice, text in (("alice", "今日はいい天気ですね。"), ("bob", "Nice to meet you.")):
            n0 = len(calls)
            t0 = time.monotonic()
            chunks, stamps = [], []
            for c in tts.synthesize(text, voice=voice):
                stamps.append(time.monotonic())
                chunks.append(c)
            res[voice] = chunks_info(chunks, t0, stamps)
            res[voice]["requests"] = len(calls) - n0
        res["encoded_references"] = len(tts._engine.ref_by_hash)
        # language routing with no voice named: Japanese text -> alice
        list(tts.synthesize("はい。", language="ja"))
        res["ja_default_refs"] = out["requests"][-1]["references"]
        return res

    @scenario(out, "bad_reference_at_request")
    def _():
        # bob's audio is replaced by garbage after load: a clear AudioError naming the file
        tts._ref_cache.clear()
        bob = refs / "bob" / "sample.flac"
        bob.write_bytes(b"fLaC garbage")
        try:
            list(tts.synthesize("Hello.", voice="bob"))
        except AudioError as exc:
            return {"raised": type(exc).__name__, "message": str(exc)}
        return {"raised": None}

    tts.close()

    # a checkpoint whose model.pth is not a torch file: fish-speech fails inside its worker thread
    bad = work / "bad-ckpt"
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(ckpt, bad)
    (bad / "model.pth").write_bytes(b"this is not a checkpoint")

    def load_outcome(t) -> dict:
        """What load() raised (type, message, seconds, classes), or {"raised": None}."""
        t0 = time.monotonic()
        try:
            t.load()
        except Exception as exc:
            return {"raised": type(exc).__name__, "message": str(exc), "elapsed": time.monotonic() - t0,
                    "mro": [c.__name__ for c in type(exc).__mro__]}
        return {"raised": None}

    @scenario(out, "worker_load_failure")
    def _():
        t = FishTTS(bad, device="cpu", threads=2, codec_config=CODEC_CONFIG, load_timeout=120, **GEN)
        return load_outcome(t)

    @scenario(out, "load_timeout")
    def _():
        t = FishTTS(ckpt, device="cpu", threads=2, codec_config=CODEC_CONFIG, load_timeout=0.05, **GEN)
        return load_outcome(t)

    @scenario(out, "server_fallback")
    def _():
        from fastapi.testclient import TestClient

        from spark_voice.config import Settings
        from spark_voice.serve.app import create_app

        root = Path(os.environ.get("SPARK_VOICE_ROOT", Path(__file__).resolve().parent.parent))
        s = Settings.load(root, environ={}, use_dotenv=False, profile="mock", TTS_PROVIDER="fish",
                          TTS_FALLBACK="piper", TTS_BACKEND="cpu", TTS_MODEL_LOCAL_DIR=str(bad),
                          TTS_REFERENCE_LOCAL_DIR=str(work / "no-references"), TTS_FISH_LOAD_TIMEOUT="120",
                          TTS_FISH_CODEC_CONFIG=CODEC_CONFIG, TTS_THREADS="2")
        with TestClient(create_app(s)) as client:
            deadline = time.monotonic() + 240
            while True:
                r = client.get("/ready")
                if r.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            health = client.get("/health").json()
            speech = client.post("/v1/audio/speech", json={"model": "tts", "input": "Hello from the fallback.",
                                                           "response_format": "wav"})
            body = {"ready_status": r.status_code, "tts": health["providers"]["tts"],
                    "warnings": health.get("warnings", []), "speech_status": speech.status_code,
                    "speech_type": speech.headers.get("content-type"), "speech_bytes": len(speech.content)}
            if speech.status_code != 200:
                body["speech_error"] = speech.text[:500]
            return body

    out_path.write_text(json.dumps(out, indent=1, ensure_ascii=False, default=str), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: fish_driver.py CKPT_DIR WORK_DIR OUT.json")
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
    os._exit(0)  # fish-speech's worker threads and a stuck launcher thread must not keep us alive
