"""Serialising a client's request for one target, with that target's header rewrites."""

from __future__ import annotations

from shadowd.config import TargetConfig
from shadowd.exchange import Headers

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded. "proxy-connection"
# is the pre-standard spelling some clients still send.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)


# RFC 9110 §9.2.2: may be sent again on a fresh connection when a kept-alive one was closed
# under them before any answer byte arrived.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

# Methods whose requests carry a Content-Length even when the body is empty (RFC 9110 §8.6:
# a user agent should send one when the method defines a meaning for a body).
ALWAYS_LENGTH_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


# Connection header values (lower-cased) that declare no other field hop-by-hop.
PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})


def connection_listed(headers: Headers) -> frozenset[bytes]:
    """Header names a ``Connection`` header declares hop-by-hop (besides the fixed ones)."""
    names: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token and token not in (b"close", b"keep-alive"):
                    names.add(token)
    return frozenset(names)


class RequestTemplate:
    """What is fixed per target, computed once: path prefix, dropped names, added lines."""

    __slots__ = ("_default_host", "_drop", "_extra", "_prefix")

    def __init__(self, target: TargetConfig) -> None:
        drop = {name.lower().encode("latin-1") for name in target.remove_headers}
        extra = []
        for name, value in target.set_headers:
            drop.add(name.lower().encode("latin-1"))
            extra.append(f"{name}: {value}\r\n".encode("latin-1"))
        if target.host_header is not None:
            drop.add(b"host")
            extra.append(f"Host: {target.host_header}\r\n".encode("latin-1"))
        self._drop = frozenset(drop)
        self._extra = b"".join(extra)
        self._prefix = target.base_path.encode("latin-1")
        default_port = 443 if target.scheme == "https" else 80
        netloc = target.host if target.port == default_port else f"{target.host}:{target.port}"
        sets_host = target.host_header is not None or any(
            name.lower() == "host" for name, _ in target.set_headers
        )
        self._default_host = b"" if sets_host else f"Host: {netloc}\r\n".encode("latin-1")

    def build(
        self, method: bytes, target: bytes, headers: Headers, body: bytes, has_host: bool
    ) -> bytes:
        """The whole request as bytes. ``headers`` are already free of hop-by-hop fields and
        of Content-Length, except an explicit ``Content-Length: 0`` for a method outside
        ``ALWAYS_LENGTH_METHODS`` (then ``body`` is empty and no second one is added)."""
        parts = [method, b" ", self._prefix, target, b" HTTP/1.1\r\n"]
        drop = self._drop
        append = parts.append
        if drop:
            for name, value in headers:
                if name.lower() not in drop:
                    append(name)
                    append(b": ")
                    append(value)
                    append(b"\r\n")
        else:
            for name, value in headers:
                append(name)
                append(b": ")
                append(value)
                append(b"\r\n")
        if not has_host:
            append(self._default_host)  # HTTP/1.0 clients may omit Host; 1.1 targets need one
        append(self._extra)
        if body or method in ALWAYS_LENGTH_METHODS:
            append(b"Content-Length: %d\r\n\r\n" % len(body))
            append(body)
        else:
            append(b"\r\n")
        return b"".join(parts)
