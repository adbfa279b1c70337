"""onnxruntime sessions for the small CPU models (VAD, end-of-turn, Kokoro, Piper): one place for the
options every one of them wants — an explicit thread count, sequential execution, threads that sleep
instead of spinning (engines share the cores), quiet logs."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import MissingDependency, ModelNotFound


def import_onnxruntime(extra: str) -> ModuleType:
    """onnxruntime, or MissingDependency naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependency("onnxruntime", extra, str(exc)) from None
    return onnxruntime


def session_options(threads: int) -> Any:
    """SessionOptions: `threads` intra-op threads, one inter-op thread, no spinning, errors only."""
    ort = import_onnxruntime("stt")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def cpu_session(path: str | Path, threads: int, *, what: str, extra: str = "stt") -> Any:
    """An InferenceSession on the CPU provider; ModelNotFound naming `what` when the file is missing
    or not a loadable ONNX model."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFound(f"{path}: {what} file does not exist")
    ort = import_onnxruntime(extra)
    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelNotFound(f"{path}: not a loadable {what} ONNX model ({exc})") from None
