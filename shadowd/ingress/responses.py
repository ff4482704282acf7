"""shadowd's own short answers (errors it raises itself), built once per status."""

from __future__ import annotations

from http import HTTPStatus


def error_response(status: int, message: str, *, close: bool) -> bytes:
    """A complete HTTP/1.1 answer with a one-line plain-text body naming shadowd as the source."""
    body = f"shadowd: {status} {HTTPStatus(status).phrase}: {message}\n".encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body
