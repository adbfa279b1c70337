"""Who may call the server: the API key (SERVE_API_KEY) and short-lived session tokens.

* HTTP and websocket clients that can set headers send ``Authorization: Bearer <SERVE_API_KEY>``.
  Keys are never read from URLs (they end up in logs and browser history).
* Browsers cannot set headers on a websocket: a trusted party holding the key calls
  ``POST /v1/session-token`` and hands the returned token to the page, which offers it as the
  websocket subprotocol ``spark-voice.token.<token>`` (next to ``spark-voice``, which the server
  selects) or, failing that, as the query parameter ``?token=<token>``. A token is also accepted as
  ``Authorization: Bearer <token>`` on HTTP routes, except on /v1/session-token itself (a token
  cannot renew itself).
* Clients that speak the OpenAI Realtime browser convention may instead offer the key itself as a
  subprotocol, ``openai-insecure-api-key.<key>`` (or ``bearer.<key>``): a header, never a URL.
* A token is ``sv1.<expiry unix s>.<nonce>.<signature>``: HMAC-SHA256 over the first three parts,
  with a secret derived from the key (rotating the key voids all tokens). Without a key (loopback
  only, see limits.check_bind) everything is open and tokens are signed with a per-process secret.

The comparison works on bytes (UTF-8 keys match; constant time).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

SUBPROTOCOL = "spark-voice"
TOKEN_SUBPROTOCOL_PREFIX = "spark-voice.token."
KEY_SUBPROTOCOL_PREFIXES = ("openai-insecure-api-key.", "bearer.")
CREDENTIAL_PREFIXES = (TOKEN_SUBPROTOCOL_PREFIX, *KEY_SUBPROTOCOL_PREFIXES)
TOKEN_VERSION = "sv1"
_PROCESS_SECRET = secrets.token_bytes(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _secret(key: str) -> bytes:
    if not key:
        return _PROCESS_SECRET
    return hmac.new(key.encode("utf-8"), b"spark-voice session token v1", hashlib.sha256).digest()


def _sign(key: str, payload: str) -> str:
    return _b64(hmac.new(_secret(key), payload.encode("ascii"), hashlib.sha256).digest())


def issue_token(key: str, ttl_s: float, now: float | None = None) -> tuple[str, int]:
    """A token valid for `ttl_s` seconds: (token, expiry as unix seconds)."""
    exp = int((time.time() if now is None else now) + ttl_s)
    payload = f"{TOKEN_VERSION}.{exp}.{secrets.token_urlsafe(12)}"
    return f"{payload}.{_sign(key, payload)}", exp


def verify_token(key: str, token: str, now: float | None = None) -> bool:
    """True for an unexpired token signed with this key's secret."""
    parts = (token or "").split(".")
    if len(parts) != 4 or parts[0] != TOKEN_VERSION or not parts[1].isdigit() or len(token) > 256:
        return False
    payload = ".".join(parts[:3])
    try:
        ok = hmac.compare_digest(_sign(key, payload).encode("ascii"), parts[3].encode("ascii"))
    except UnicodeEncodeError:
        return False
    return ok and int(parts[1]) > (time.time() if now is None else now)


def _header(scope: dict, name: bytes) -> bytes:
    for k, v in scope.get("headers") or []:
        if k.lower() == name:
            return bytes(v)
    return b""


def bearer(scope: dict) -> bytes:
    """The credential of an 'Authorization: Bearer ...' header, as raw bytes (b"" when absent)."""
    auth = _header(scope, b"authorization").strip()
    return auth[7:].strip() if auth[:7].lower() == b"bearer " else b""


def key_matches(given: bytes, key: str) -> bool:
    return bool(key) and bool(given) and hmac.compare_digest(given, key.encode("utf-8"))


def http_authenticated(scope: dict, key: str, *, allow_token: bool = True) -> bool:
    """An HTTP request carries the key (or a valid token) — always True when no key is set."""
    if not key:
        return True
    given = bearer(scope)
    if key_matches(given, key):
        return True
    if allow_token:
        try:
            return verify_token(key, given.decode("ascii"))
        except UnicodeDecodeError:
            return False
    return False


def offered_subprotocols(scope: dict) -> list[str]:
    return [str(p) for p in scope.get("subprotocols") or []]


def ws_authenticate(scope: dict, key: str) -> tuple[bool, str | None]:
    """(allowed, subprotocol to select) for a websocket handshake.

    The key in the Authorization header or a key subprotocol, a token in a
    ``spark-voice.token.<token>`` subprotocol or a ``token=`` query parameter."""
    offered = offered_subprotocols(scope)
    token_protos = [p for p in offered if p.startswith(TOKEN_SUBPROTOCOL_PREFIX)]
    # a browser drops the connection unless one offered protocol is selected: the first that is not
    # a credential (spark-voice, realtime ...), else the first offered
    plain = [p for p in offered if not p.startswith(CREDENTIAL_PREFIXES)]
    select = (plain or offered)[0] if offered else None
    if not key:
        return True, select
    if key_matches(bearer(scope), key):
        return True, select
    for p in offered:
        for prefix in KEY_SUBPROTOCOL_PREFIXES:
            if p.startswith(prefix) and key_matches(p[len(prefix):].encode("utf-8"), key):
                return True, select
    for p in token_protos:
        if verify_token(key, p[len(TOKEN_SUBPROTOCOL_PREFIX):]):
            return True, select
    query = parse_qs((scope.get("query_string") or b"").decode("latin-1"))
    if any(verify_token(key, t) for t in query.get("token", [])[:1]):
        return True, select
    return False, None


def token_body(key: str, ttl_s: float) -> dict[str, Any]:
    token, exp = issue_token(key, ttl_s)
    return {"object": "session_token", "token": token, "expires_at": exp, "expires_in": int(ttl_s),
            "websocket_protocols": [SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX + token]}
