"""whisper.cpp's native environment: OpenMP wait policy, the binding import, and its log lines.

Threads: whisper.cpp runs its matrix work on OpenMP (the pywhispercpp wheel bundles libgomp). By
default idle OpenMP workers *spin* for a while after each parallel region; with 2 cores and
llama.cpp in the same process those spinning threads steal the LLM's cores (we measured ~10x
slower token generation). ``OMP_WAIT_POLICY=passive`` makes them sleep. libgomp reads it once,
when the library loads, so it must be in the environment before pywhispercpp is imported:
``import spark_voice`` sets it (setdefault; an explicit value wins), tests/conftest.py does too,
and :func:`check_omp_policy` sets it if pywhispercpp is not loaded yet. If pywhispercpp was
imported before spark_voice and the variable was not in the process environment, it returns a
warning (the backend reports it in ``warnings()``).

Logs: whisper.cpp's own log lines go to the ``spark_voice.whisper_cpp`` logger at DEBUG level
(errors at WARNING) instead of stderr (:func:`install_log`); :func:`capture_log` also collects
them while a model loads, because a failed load is only visible there.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from ...errors import MissingDependency

__all__ = ["capture_log", "check_omp_policy", "has_cuda", "import_pywhispercpp", "install_log"]

_wlog = logging.getLogger("spark_voice.whisper_cpp")

_LOG_INSTALLED = False
_LOG_LOCK = threading.Lock()
_CAPTURE: list[str] | None = None  # "level:text" log lines of the model load in progress (_INIT_LOCK)
_INIT_LOCK = threading.Lock()


# ----------------------------------------------------------------- OpenMP
def initial_env(name: str) -> bool | None:
    """Whether `name` was in the environment the process started with (None: cannot tell)."""
    try:
        with open("/proc/self/environ", "rb") as f:
            return any(item.split(b"=", 1)[0] == name.encode() for item in f.read().split(b"\0"))
    except OSError:
        return None


def check_omp_policy() -> str:
    """'' when whisper's OpenMP threads sleep when idle, else a warning text.

    libgomp reads OMP_WAIT_POLICY once, when pywhispercpp loads it. Not loaded yet: make sure the
    variable is set. Loaded already: fine if the variable was set at process start or pywhispercpp
    came after spark_voice (whose import sets it); else it may have loaded without it.
    """
    if "_pywhispercpp" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "passive")
        return ""
    hint = "import spark_voice before pywhispercpp, or export OMP_WAIT_POLICY=passive"
    if not os.environ.get("OMP_WAIT_POLICY"):
        return f"OMP_WAIT_POLICY is unset and pywhispercpp is loaded: OpenMP threads busy-wait; {hint}"
    order = list(sys.modules)
    if ("spark_voice" in sys.modules and order.index("_pywhispercpp") < order.index("spark_voice")
            and initial_env("OMP_WAIT_POLICY") is False):
        return (f"pywhispercpp was imported before spark_voice set OMP_WAIT_POLICY: OpenMP threads may "
                f"busy-wait and slow the other engines; {hint}")
    return ""


# ----------------------------------------------------------------- the binding
def import_pywhispercpp() -> tuple[ModuleType, type]:
    """(the native module ``_pywhispercpp``, ``pywhispercpp.model.Model``); MissingDependency without."""
    try:
        import _pywhispercpp as pw
        from pywhispercpp.model import Model
    except ImportError as exc:
        raise MissingDependency("pywhispercpp", "stt", str(exc)) from None
    install_log(pw)
    return pw, Model


def has_cuda(pw: ModuleType) -> bool:
    """Whether this whisper.cpp build has CUDA ("CUDA : ARCHS = ... |" in its system info)."""
    try:
        info = str(pw.whisper_print_system_info() or "")
    except Exception:
        info = ""
    return bool(re.search(r"\bCUDA\s*:", info))


# ----------------------------------------------------------------- whisper.cpp logging
def _whisper_log(level: int, text: str) -> None:  # called from native code: never raise
    try:
        text = (text or "").rstrip()
        if text:
            _wlog.log(logging.WARNING if level == 4 else logging.DEBUG, text)
            if _CAPTURE is not None:
                _CAPTURE.append(f"{level}:{text}")
    except Exception:
        pass


def _restore_whisper_log() -> None:
    # At interpreter shutdown a Python log callback would run without a thread state: put the
    # default logger back before that (whisper contexts freed later then log to stderr, if at all).
    try:
        import _pywhispercpp as pw

        pw.whisper_log_set(None)
    except Exception:
        pass


def install_log(pw: ModuleType) -> None:
    """Route whisper.cpp's log to the ``spark_voice.whisper_cpp`` logger (once per process)."""
    global _LOG_INSTALLED
    with _LOG_LOCK:
        if _LOG_INSTALLED or not hasattr(pw, "whisper_log_set"):
            return
        pw.whisper_log_set(_whisper_log)
        atexit.register(_restore_whisper_log)
        _LOG_INSTALLED = True


@contextmanager
def capture_log() -> Iterator[list[str]]:
    """Collect whisper.cpp's log lines ("level:text", level 4 = error) during the block.

    One capture at a time (model loads are serialised by it): the native callback cannot tell
    which load a line belongs to.
    """
    global _CAPTURE
    with _INIT_LOCK:
        lines: list[str] = []
        _CAPTURE = lines
        try:
            yield lines
        finally:
            _CAPTURE = None
