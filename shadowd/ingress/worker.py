"""The ingress worker process: one data plane, its hand-off to an analysis worker, and its
end of the control channel. Several run side by side, bound to the same address with
SO_REUSEPORT (or sharing an inherited listener), so the kernel spreads clients across cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import socket
from typing import TYPE_CHECKING, Any

from shadowd.config import Config
from shadowd.control import Channel, ChannelClosed
from shadowd.ingress.plane import DataPlane
from shadowd.metrics import Metrics, export_families
from shadowd.stream.handoff import RecordSender
from shadowd.tasks import TaskGroup

if TYPE_CHECKING:
    from shadowd.stream.redis_stream import StreamSender

log = logging.getLogger("shadowd.ingress")

REPORT_INTERVAL = 1.0  # seconds between two reports of metrics and status


class IngressWorker:
    def __init__(self, config: Config, index: int, handoff_path: str) -> None:
        self.config = config
        self.index = index
        self.metrics = Metrics(config)
        self._tasks = TaskGroup()
        self.sender: RecordSender | StreamSender
        if config.stream.redis:  # the fleet's stream on Redis instead of the local hand-off
            from shadowd.stream.redis_stream import StreamSender, consumer_name

            self.sender = StreamSender(
                config.stream,
                config.analysis.queue_bytes,
                self.metrics.mirror_dropped,
                series=lambda: export_families(self.metrics.registry),
                name=consumer_name(config.stream, f".ingress-{index}"),
            )
        else:
            self.sender = RecordSender(
                handoff_path, config.analysis.queue_bytes, self.metrics.mirror_dropped
            )
        self.plane = DataPlane(config, self.metrics, self._tasks, self.sender.offer)

    async def run(self, channel: Channel, sock: socket.socket | None, port: int) -> None:
        self.sender.start()
        await self.plane.start(sock, port=port, reuse_port=sock is None)
        host, bound_port = self.plane.address
        channel.send({"t": "ready", "pid": os.getpid(), "address": [host, bound_port]})
        reporter = asyncio.get_running_loop().create_task(self._report_every(channel))
        try:
            await self._serve(channel)
        finally:
            reporter.cancel()
            await self._tasks.cancel_all()

    async def _serve(self, channel: Channel) -> None:
        while True:
            try:
                message = await channel.receive()
            except ChannelClosed:
                # The supervisor is gone (killed): nobody will merge our statistics or restart
                # us. Finish the clients we have and stop, rather than serve unsupervised.
                log.warning("supervisor gone: ingress worker %d drains and stops", self.index)
                await self.drain(10.0)
                return
            kind = message["t"]
            if kind == "mirror":
                self.plane.set_mirroring(bool(message["enabled"]))
                self.report(channel, seq=message.get("seq"))
            elif kind == "report_now":
                self.report(channel, seq=message.get("seq"))
            elif kind == "config":
                config: Config = pickle.loads(message["config"])
                self.config = config
                self.plane.reconfigure(config)
                self.sender.set_limit(config.analysis.queue_bytes)
                self.report(channel, seq=message.get("seq"))
            elif kind == "drain":
                drained = await self.drain(message.get("grace", 10.0))
                self.report(channel, seq=message.get("seq"), extra={"drained": drained})
                await channel.drain()
                return

    async def drain(self, grace: float) -> bool:
        drained = await self.plane.drain(grace)
        await self.sender.close(timeout=min(grace, 5.0))
        self.plane.close()
        return drained

    def report(
        self, channel: Channel, seq: int | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        status = self.plane.status()
        status["handed_off"] = self.sender.handed_off
        status["analysis_connected"] = self.sender.connected
        if extra:
            status.update(extra)
        with contextlib.suppress(ChannelClosed):
            channel.send(
                {
                    "t": "report",
                    "seq": seq,
                    "metrics": export_families(self.metrics.registry),
                    "status": status,
                }
            )

    async def _report_every(self, channel: Channel) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            self.report(channel)
            try:
                await channel.drain()
            except ChannelClosed:
                return
