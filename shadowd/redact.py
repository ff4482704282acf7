"""Keeping secrets out of samples, reports and capture files.

Redaction happens before a value is stored anywhere a person or a disk can see it. Headers
and query parameters are redacted by name: a fixed list (Authorization, Cookie, API keys...)
plus any name that says what it holds ("token", "secret", "password", "api-key"...), plus
configured names. JSON body fields by configured path, and by the same name rule.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from shadowd.exchange import Headers

MARKER = "[redacted]"
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "apikey",
        "x-auth-token",
        "x-csrf-token",
        "x-amz-security-token",
    }
)
_SECRET_NAME = re.compile(
    r"token|secret|passw|pwd|api[-_]?key|apikey|session|credential|signature", re.IGNORECASE
)


def is_secret_name(name: str, extra: frozenset[str] = frozenset()) -> bool:
    lname = name.lower()
    return lname in SECRET_HEADERS or lname in extra or bool(_SECRET_NAME.search(lname))


def marker(value: str | bytes, key: bytes | None = None) -> str:
    """The stand-in for a secret: a fixed marker, or with a key (``$SHADOWD_REDACT_KEY``) a
    keyed hash, so that equal secrets stay comparable without being readable."""
    if key is None:
        return MARKER
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return f"[redacted:{hmac.new(key, raw, hashlib.sha256).hexdigest()[:12]}]"


def redaction_key() -> bytes | None:
    key = os.environ.get("SHADOWD_REDACT_KEY")
    return key.encode() if key else None


def redact_headers(
    headers: Headers, extra: frozenset[str] = frozenset(), key: bytes | None = None
) -> list[list[str]]:
    """Headers decoded for display, secret values replaced."""
    out = []
    for name, value in headers:
        text_name = name.decode("latin-1")
        if is_secret_name(text_name, extra):
            out.append([text_name, marker(value, key)])
        else:
            out.append([text_name, value.decode("latin-1")])
    return out


def redact_target(
    target: str, extra: frozenset[str] = frozenset(), key: bytes | None = None
) -> str:
    """``/login?user=a&token=xyz`` → ``/login?user=a&token=%5Bredacted%5D``."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(is_secret_name(k, extra) for k, _ in pairs):
        return target
    redacted = [(k, marker(v, key) if is_secret_name(k, extra) else v) for k, v in pairs]
    return path + "?" + urlencode(redacted, quote_via=quote, safe="/:")


def redact_value_at(path: str, value: Any) -> Any:
    """A diff value shown in a sample, hidden when its field name says it is a secret."""
    leaf = re.split(r"[.\[\]\"]+", path.rstrip(']"'))[-1] if path else ""
    return MARKER if leaf and _SECRET_NAME.search(leaf) else value
