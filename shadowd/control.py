"""The control channel between the supervisor and its workers: framed msgpack messages over a
Unix socket, each a map with a ``"t"`` (type) member. The cold path: a few messages a second.

Worker -> supervisor: ``hello`` (role, index, pid), ``ready``, ``report`` (metrics, status and,
from analysis workers, a statistics delta). Supervisor -> worker: ``mirror`` (kill switch),
``config`` (a validated config after SIGHUP), ``reset``, ``report_now``, ``drain``.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack

_LENGTH = struct.Struct(">I")
MAX_MESSAGE = 1 << 30  # a statistics delta of 200 endpoints x 3 targets is a few MiB


class ChannelClosed(ConnectionError):
    """The other end went away."""


class Channel:
    """One end of a control connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, path: str) -> Channel:
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_MESSAGE)
        return cls(reader, writer)

    def send(self, message: dict[str, Any]) -> None:
        if self._writer.is_closing():
            raise ChannelClosed("control channel closed")
        payload = msgpack.packb(message, use_bin_type=True)
        self._writer.write(_LENGTH.pack(len(payload)) + payload)

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise ChannelClosed(str(exc)) from exc

    async def receive(self) -> dict[str, Any]:
        try:
            head = await self._reader.readexactly(_LENGTH.size)
            (length,) = _LENGTH.unpack(head)
            if length > MAX_MESSAGE:
                raise ChannelClosed(f"control message of {length} bytes refused")
            payload = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ChannelClosed("control channel closed") from exc
        message = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        if not isinstance(message, dict) or "t" not in message:
            raise ChannelClosed("malformed control message")
        return message

    def close(self) -> None:
        self._writer.close()
