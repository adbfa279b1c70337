"""`spark-voice serve` and `python -m spark_voice.serve`: start the server with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ..cli_common import common, dispatch, settings_from_args
from ..config import Settings


def _add_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--host", help="bind address (default SERVE_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default SERVE_PORT)")
    p.add_argument("--reload", action="store_true", help="restart on code changes (development)")
    p.add_argument("--no-load", action="store_true", help="do not load models at start-up (lazy)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without SERVE_API_KEY (trusted networks only)")
    p.set_defaults(func=cmd_serve)
    return p


def add_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
               common: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = common(subparsers.add_parser("serve", help="run the HTTP/websocket server (OpenAI-compatible routes)"))
    return _add_options(p)


def _setup_logs(settings: Settings, args: argparse.Namespace | None) -> None:
    from ..logs import setup_logging
    from .middleware import RequestIdFilter

    fmt = "text" if settings.log_format == "text" else "json"  # auto -> json for the server
    if getattr(args, "json_logs", False):
        fmt = "json"
    setup_logging(fmt, "DEBUG" if getattr(args, "verbose", False) else settings.log_level)
    handlers = logging.getLogger("spark_voice").handlers
    for h in handlers:
        h.addFilter(RequestIdFilter())
    for name in ("uvicorn", "uvicorn.error"):  # uvicorn's own messages in the same format
        lg = logging.getLogger(name)
        lg.handlers = list(handlers)
        lg.setLevel(settings.log_level)
        lg.propagate = False
    logging.getLogger("uvicorn.access").disabled = True  # we log every request with its id


def serve(settings: Settings | None = None, *, host: str | None = None, port: int | None = None,
          reload: bool = False, load: bool = True, insecure: bool = False,
          args: argparse.Namespace | None = None) -> int:
    """Run the server until interrupted (blocking). A non-loopback host without SERVE_API_KEY is
    refused (ConfigError) unless `insecure` or SERVE_INSECURE=true."""
    try:
        import uvicorn
    except ImportError:
        from ..errors import MissingDependency

        raise MissingDependency("uvicorn", "serve") from None
    from .limits import check_bind, is_loopback, uvicorn_options

    s = settings if settings is not None else Settings.load()
    host = host or s.serve_host
    port = port or s.serve_port
    check_bind(host, s, insecure)
    _setup_logs(s, args)
    log = logging.getLogger("spark_voice.serve")
    if not s.serve_api_key and not is_loopback(host):
        log.warning("listening beyond loopback WITHOUT an API key (--insecure / SERVE_INSECURE)",
                    extra={"host": host})
    log.info("listening", extra={"url": f"http://{host}:{port}", "profile": s.profile})
    common: dict[str, Any] = dict(host=host, port=port, log_config=None, access_log=False, **uvicorn_options())
    if reload:
        # the reloader imports the app in a child process: settings travel through the environment
        if args is not None and getattr(args, "profile", None):
            os.environ["SPARK_VOICE_PROFILE"] = args.profile
        for item in (getattr(args, "set", None) or []):
            k, _, v = item.partition("=")
            os.environ[k.strip().upper()] = v
        pkg = str(Path(__file__).resolve().parent.parent)  # watch the package, not .venv or ./models
        uvicorn.run("spark_voice.serve.app:create_app", factory=True, reload=True, reload_dirs=[pkg], **common)
        return 0
    from .app import create_app

    app = create_app(s, load=load)
    uvicorn.run(app, **common)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    s = settings_from_args(args)
    return serve(s, host=args.host, port=args.port, reload=args.reload, load=not args.no_load,
                 insecure=args.insecure, args=args)


def main(argv: Sequence[str] | None = None) -> int:
    p = common(argparse.ArgumentParser(prog="python -m spark_voice.serve", description=__doc__))
    _add_options(p)
    args = p.parse_args(argv)
    return dispatch(args)
