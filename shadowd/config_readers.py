"""Readers for config values: each converts a TOML value or explains what is wrong with it.

Used by ``shadowd.config_loader``'s declarative schema; a reader raises ``Invalid`` with a
message that does not name the key (the loader adds it).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shadowd.config import Listen


class Invalid(ValueError):
    """A value that cannot be accepted; the message says why (without the key)."""


Reader = Callable[[Any], Any]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?[bB]?|[bB])?\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "ki": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "mi": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "gi": 1024**3,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0}
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FRAMING_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
    }
)


# -- readers ---------------------------------------------------------------------------------
def string(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be a string, got {kind_of(value)}")
    return value


def worker_count(value: Any) -> int:
    """``"auto"`` (0: sized from the machine's cores) or a count of processes, 1 to 64."""
    if value == "auto":
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f'must be "auto" or a whole number from 1 to 64, got {kind_of(value)}')
    if not 1 <= value <= 64:
        raise Invalid(f'must be "auto" or a whole number from 1 to 64, got {value}')
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false, got {kind_of(value)}")
    return value


def integer(low: int | None = None, high: int | None = None) -> Reader:
    def read(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"must be an integer, got {kind_of(value)}")
        _check_range(value, low, high)
        return value

    return read


def number(
    low: float | None = None, high: float | None = None, *, above: float | None = None
) -> Reader:
    def read(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"must be a number, got {kind_of(value)}")
        _check_finite(value)
        if above is not None and value <= above:
            raise Invalid(f"must be more than {above:g}, got {value:g}")
        _check_range(value, low, high)
        return float(value)

    return read


def size(value: Any) -> int:
    """Bytes: an integer, or a string such as "10MiB", "512KiB", "64kB"."""
    if isinstance(value, int) and not isinstance(value, bool):
        amount = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        unit = (m.group(2) or "").lower()
        if unit not in _SIZE_UNITS:
            raise Invalid(f"unknown size unit in {value!r} (use B, KiB, MiB, GiB, kB, MB, GB)")
        scaled = float(m.group(1)) * _SIZE_UNITS[unit]
        _check_finite(scaled, value)
        amount = int(scaled)
    else:
        raise Invalid(f'must be a size in bytes or a string like "10MiB", got {value!r}')
    if amount <= 0:
        raise Invalid(f"must be more than 0 bytes, got {value!r}")
    return amount


def duration(value: Any) -> float:
    """Seconds: a number, or a string such as "500ms", "2s", "5m", "1h"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2) or ""]
    else:
        raise Invalid(f'must be seconds or a string like "500ms", "2s", "5m", got {value!r}')
    _check_finite(seconds, value)
    if seconds <= 0:
        raise Invalid(f"must be more than 0, got {value!r}")
    return seconds


def listen(value: Any) -> Listen:
    text = string(value)
    m = re.match(r"^\[([0-9a-fA-F:.]+)\]:(\d+)$", text) or re.match(r"^([^:\[\]]+):(\d+)$", text)
    if not m:
        raise Invalid(f'must be "host:port" or "[ipv6]:port", got {text!r}')
    port = int(m.group(2))
    if port > 65535:
        raise Invalid(f"port must be 0-65535, got {port}")
    return Listen(m.group(1), port)


def one_of(*choices: str) -> Reader:
    def read(value: Any) -> str:
        text = string(value)
        if text not in choices:
            raise Invalid(f"must be one of {', '.join(repr(c) for c in choices)}, got {text!r}")
        return text

    return read


def strings(each: Reader = string) -> Reader:
    def read(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise Invalid(f"must be a list, got {kind_of(value)}")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(each(item))
            except Invalid as exc:
                raise Invalid(f"item {i + 1}: {exc}") from None
        return tuple(out)

    return read


def regex(value: Any) -> str:
    text = string(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise Invalid(f"is not a valid regular expression ({exc}): {text!r}") from None
    return text


def method(value: Any) -> str:
    text = string(value).upper()
    if not _TOKEN.match(text):
        raise Invalid(f"is not an HTTP method: {value!r}")
    return text


def header_name(value: Any) -> str:
    text = string(value)
    if not _TOKEN.match(text):
        raise Invalid(f"is not a valid header name: {text!r}")
    return text.lower()


def removable_header(value: Any) -> str:
    name = header_name(value)
    if name == "host":
        raise Invalid("Host cannot be removed (HTTP/1.1 requires it): set host_header instead")
    return name


def route_template(value: Any) -> str:
    text = string(value).strip()
    verb, _, route = text.rpartition(" ")
    if verb and not _TOKEN.match(verb):
        raise Invalid(f"method {verb!r} is not an HTTP method")
    if not route.startswith("/"):
        raise Invalid(f'must be "/path/{{name}}" or "METHOD /path/{{name}}", got {text!r}')
    if route.count("{") != route.count("}"):
        raise Invalid(f"unbalanced braces in {text!r}")
    for name in _PLACEHOLDER.findall(route):
        if not _IDENT.match(name):
            raise Invalid(f"placeholder {{{name}}} must be an identifier")
    return f"{verb.upper()} {route}" if verb else route


def json_path(value: Any) -> str:
    text = string(value)
    if not text.startswith("$"):
        raise Invalid(f'must be a JSON path starting with "$", got {text!r}')
    return text


def redact_path(value: Any) -> str:
    """A ``redact_body_fields`` path, read by the parser the capture writer uses, so a path
    accepted here can never fail when the first record is written."""
    from shadowd.capture.redact import parse_path

    text = json_path(value)
    try:
        parse_path(text)
    except ValueError as exc:
        raise Invalid(
            f'{exc} (use $.name, $.a.b, $.items[*].x, $.list[0], $["any name"])'
        ) from None
    return text


def header_value(value: Any) -> str:
    """A value written into a request header line as is: a CR or LF would end the line and
    let the rest be read as another header or another request (header injection)."""
    text = string(value)
    # The value itself is not echoed: it is often a credential.
    for position, char in enumerate(text):
        if (char < " " and char != "\t") or char == "\x7f":
            raise Invalid(f"must not contain control characters ({char!r} at {position})")
        if ord(char) > 0xFF:
            raise Invalid(f"must be Latin-1 text, as HTTP/1.1 headers are ({char!r} at {position})")
    return text


def host_header(value: Any) -> str:
    text = header_value(value)
    if not text or any(c in text for c in " \t/?#@"):
        raise Invalid(
            f'must be a host name with an optional port ("api.example.com:8080"), got {text!r}'
        )
    return text


def file_path(value: Any) -> Path:
    text = string(value)
    if "\0" in text:
        raise Invalid(f"must not contain a NUL character: {text!r}")
    if not text:
        raise Invalid("must not be empty")
    try:
        return Path(text).expanduser()
    except RuntimeError:  # "~name" for a user this machine does not have
        raise Invalid(f"cannot expand {text.split('/')[0]!r}: no such user") from None


def existing_file(value: Any) -> Path:
    path = file_path(value)
    try:
        if not path.is_file():
            raise Invalid(f"no such file: {path}")
    except OSError as exc:  # a name too long, a permission on a folder above it...
        raise Invalid(f"cannot use {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.R_OK):
        raise Invalid(f"cannot read {path}")
    return path


def token_file(value: Any) -> Path:
    """A readable file holding a non-empty bearer token (an empty one would accept anyone)."""
    path = existing_file(value)
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise Invalid(f"cannot read {path}: {exc}") from None
    if not token:
        raise Invalid(f"{path} is empty: it must hold the bearer token")
    return path


def header_table(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise Invalid(f'must be a table like {{ "X-Name" = "value" }}, got {kind_of(value)}')
    out = []
    seen: set[str] = set()
    for name, item in value.items():
        if not _TOKEN.match(name):
            raise Invalid(f"{name!r} is not a valid header name")
        if name.lower() in FRAMING_HEADERS:
            # shadowd frames each request itself: a second Content-Length or a
            # Transfer-Encoding would make the target read the body differently (smuggling).
            raise Invalid(f"{name!r} cannot be set: shadowd writes the message framing itself")
        if name.lower() in seen:
            raise Invalid(f"{name!r} is given twice (header names are case-insensitive)")
        seen.add(name.lower())
        try:
            out.append((name, header_value(item)))
        except Invalid as exc:
            raise Invalid(f"value of {name!r} {exc}") from None
    return tuple(out)


def weights(value: Any) -> tuple[tuple[str, float], ...]:
    if not isinstance(value, dict):
        raise Invalid(f'must be a table like {{ "GET /users/{{id}}" = 2.0 }}, got {kind_of(value)}')
    out = []
    for name, item in value.items():
        out.append((name, number(0.0)(item)))
    return tuple(out)


def _check_finite(number: float, shown: Any = None) -> None:
    # TOML has nan and inf; a NaN threshold compares false with everything, so it would
    # silently pass what it was meant to stop.
    if not math.isfinite(number):
        raise Invalid(f"must be a finite number, got {shown if shown is not None else number!r}")


def _check_range(value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise Invalid(f"must be at least {low:g}, got {value:g}")
    if high is not None and value > high:
        raise Invalid(f"must be at most {high:g}, got {value:g}")


def kind_of(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def redis_url(value: Any) -> str:
    """``redis://host:port/db``, ``rediss://`` (TLS) or ``unix:///path``; credentials belong
    in ``password_file``, never in a file that is read by many and logged."""
    text = string(value)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise Invalid(f"is not a valid URL ({exc}): {text!r}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise Invalid(f"must be a redis://, rediss:// or unix:// URL, got {text!r}")
    if parts.scheme != "unix" and not parts.hostname:
        raise Invalid(f"needs a host: {text!r}")
    if parts.password or parts.username:
        raise Invalid("must not carry credentials: put the password in stream.password_file")
    return text


def stream_name(value: Any) -> str:
    text = string(value)
    if not text or len(text) > 200 or any(c <= " " or c == "\x7f" for c in text):
        raise Invalid(f"must be 1-200 printable characters without spaces, got {text!r}")
    return text
