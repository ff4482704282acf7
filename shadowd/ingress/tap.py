"""Tap-mode ingress: a proxy already in front of production sends shadowd copies.

Mirroring proxies discard the copy's answer (nginx "responses to mirror subrequests are
ignored", Envoy "fire and forget"), and nginx holds the client's connection until its mirror
subrequest ends, so each copy is answered at once with ``204`` before anything else happens.
shadowd then sends the copy to primary, candidate (and secondary) itself and diffs as in proxy
mode. What the mirroring proxies did to the copy is undone first:

- Envoy and Istio append ``-shadow`` to the Host (``app`` → ``app-shadow``): stripped.
- nginx's ``mirror`` subrequest has the mirror location's URI; the original one comes from an
  ``X-Original-URI`` header (``proxy_set_header X-Original-URI $request_uri;``), or from the
  path itself when the mirror location proxies to ``http://shadowd$request_uri``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shadowd.exchange import Headers
from shadowd.http1.request import ParsedRequest, SendData
from shadowd.ingress.http import MAX_PIPELINED, RequestReader, forwardable_headers
from shadowd.upstream.request import ALWAYS_LENGTH_METHODS

if TYPE_CHECKING:
    from shadowd.ingress.server import Ingress

_ACK = b"HTTP/1.1 204 No Content\r\nServer: shadowd\r\n\r\n"
_ACK_CLOSE = b"HTTP/1.1 204 No Content\r\nServer: shadowd\r\nConnection: close\r\n\r\n"
_ORIGINAL_URI = b"x-original-uri"
_SHADOW_SUFFIX = b"-shadow"
# Headers that only describe the mirroring hop; the copy sent on must look like the original.
_TAP_ONLY = frozenset({_ORIGINAL_URI, b"x-shadowd-copy"})


class TapConnection(RequestReader):
    """One connection from a mirroring proxy. Answers every copy at once, then copies it on."""

    def __init__(self, ingress: Ingress) -> None:
        # Every copy is answered as soon as it is read: at most what one read holds waits.
        super().__init__(ingress, MAX_PIPELINED)
        self._ingress: Ingress = ingress

    def request_received(self, request: ParsedRequest) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(_ACK if request.keep_alive else _ACK_CLOSE)
        self._ingress.metrics.ingress_request(204)
        try:
            self._copy(request)
        finally:
            if not request.keep_alive:
                self._closed = True
                self._stream.stop()
                transport.close()
            else:
                for event in self._stream.answered(self._ingress.now):
                    if type(event) is SendData:  # a 100 Continue owed to a request behind it
                        transport.write(event.data)

    def _copy(self, request: ParsedRequest) -> None:
        headers, has_host, _ = forwardable_headers(request.headers)
        url = request.url
        kept: Headers = []
        for name, value in headers:
            lname = name.lower()
            if lname in _TAP_ONLY:
                if lname == _ORIGINAL_URI and value.startswith(b"/"):
                    url = value
                continue
            if lname == b"host":
                value = strip_shadow_suffix(value)
            kept.append((name, value))
        if request.framed and not request.body and request.method not in ALWAYS_LENGTH_METHODS:
            kept.append((b"Content-Length", b"0"))  # an explicit empty body stays explicit
        self._copy_if_wanted(request, url, kept, has_host)


def strip_shadow_suffix(host: bytes) -> bytes:
    """``app-shadow:8080`` → ``app:8080`` (Envoy/Istio mark mirrored copies this way)."""
    name, colon, port = host.partition(b":")
    if name.endswith(_SHADOW_SUFFIX):
        return name[: -len(_SHADOW_SUFFIX)] + colon + port
    return host
