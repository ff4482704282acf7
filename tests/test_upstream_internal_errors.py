"""A bug in what handles an upstream answer is reported as ours, not as the target's."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from shadowd.config import target_from_url
from shadowd.exchange import ERROR_INTERNAL, Headers
from shadowd.tasks import TaskGroup
from shadowd.upstream.pool import UpstreamPool


class BrokenSink:
    def __init__(self) -> None:
        self.errors: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_response_head(self, status: int, reason: bytes, headers: Headers) -> None:
        raise KeyError("a bug in the sink")

    def on_response_body(self, chunk: bytes) -> None:
        pass

    def on_response_flush(self) -> None:
        pass

    def on_response_complete(self) -> None:
        self.errors.set_result("")

    def on_response_error(self, kind: str) -> None:
        self.errors.set_result(kind)


async def test_an_exception_in_a_sink_is_an_internal_error_with_a_traceback(make_backend, caplog):
    backend = make_backend()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="fine")

    backend.route("GET", "/", ok)
    await backend.start()
    pool = UpstreamPool(target_from_url("primary", backend.url), TaskGroup())
    sink = BrokenSink()
    with caplog.at_level(logging.ERROR, logger="shadowd.upstream"):
        pool.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", sink)
        async with asyncio.timeout(5):
            kind = await sink.errors
    pool.close()
    assert kind == ERROR_INTERNAL  # not "protocol": the target's bytes were fine
    (record,) = [r for r in caplog.records if r.name == "shadowd.upstream"]
    assert record.exc_info is not None and record.exc_info[0] is KeyError


async def test_an_unasked_101_from_a_target_is_a_protocol_error():
    async def switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(switch, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(target_from_url("primary", f"http://127.0.0.1:{port}"), TaskGroup())
    sink = BrokenSink()
    pool.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", sink)
    try:
        async with asyncio.timeout(5):
            kind = await sink.errors
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
    assert kind == "protocol"
