import json

import numpy as np
import soundfile as sf

from conftest import tone
from spark_voice.cli import main


def wav(tmp_path):
    p = tmp_path / "in.wav"
    sf.write(p, np.concatenate([tone(1.0), np.zeros(8000, np.float32)]), 16000)
    return p


def test_run_writes_opus_and_prints_result(tmp_path, capsys):
    out = tmp_path / "out" / "answer.ogg"
    assert main(["run", str(wav(tmp_path)), "-o", str(out), "--profile", "mock", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["transcript"] and res["answer"] and res["output_format"] == "opus"
    assert res["output_rate"] == 48000  # TTS_SAMPLE_RATE=44100 is not an Opus rate
    info = sf.info(out)
    assert info.format == "OGG" and info.subtype == "OPUS" and info.channels == 1
    assert abs(info.duration - res["output_seconds"]) < 0.1
    assert not list(out.parent.glob("*.tmp"))


def test_run_text_mode_human_output(tmp_path, capsys):
    out = tmp_path / "a.wav"
    assert main(["run", "--text", "hello", "-o", str(out), "--profile", "mock", "--sample-rate", "16000"]) == 0
    text = capsys.readouterr().out
    assert "answer:" in text and "latency:" in text and "16000 Hz" in text
    assert sf.info(out).samplerate == 16000


def test_run_bad_audio_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "x.wav"
    bad.write_text("not audio")
    assert main(["run", str(bad), "--profile", "mock"]) == 2
    err = capsys.readouterr().err
    assert "x.wav" in err and "cannot decode" in err and "Traceback" not in err


def test_config_prints_sources(capsys):
    assert main(["config", "--profile", "mock", "--json", "--set", "LLM_THREADS=1"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["LLM_PROVIDER"] == {"value": "mock", "source": "profile mock"}
    assert cfg["LLM_THREADS"] == {"value": "1", "source": "argument"}
    assert main(["config", "--set", "LLM_THREADS=zero"]) == 2
    assert "LLM_THREADS" in capsys.readouterr().err


def test_voices(capsys):
    assert main(["voices", "--profile", "mock"]) == 0
    assert "mock-ja" in capsys.readouterr().out
