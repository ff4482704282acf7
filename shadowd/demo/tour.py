"""``shadowd demo``: sample services, shadowd in front, traffic through it, then the report."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys

from shadowd.config import AdminConfig, Config, IngressConfig, Listen, target_from_url
from shadowd.demo.services import CANDIDATE, PRIMARY, SECONDARY, SampleServices
from shadowd.demo.traffic import drive
from shadowd.report import render_table
from shadowd.supervisor import Supervisor
from shadowd.verdict.judge import judge


def _command_name() -> str:
    """How the user can call shadowd from here: on PATH, or by the path they just used."""
    if shutil.which("shadowd"):
        return "shadowd"
    invoked = sys.argv[0]
    if invoked.endswith("shadowd") and os.path.exists(invoked):
        return os.path.relpath(invoked)
    return f"{sys.executable} -m shadowd"


def _free_or_any(port: int) -> int:
    """``port`` when it is free on loopback (the documented default), else any free port."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


def demo_config(urls: dict[str, str], ingress_port: int, admin_port: int) -> Config:
    return Config(
        source="<demo>",
        primary=target_from_url(PRIMARY, urls[PRIMARY]),
        secondary=target_from_url(SECONDARY, urls[SECONDARY]),
        candidate=target_from_url(CANDIDATE, urls[CANDIDATE]),
        ingress=IngressConfig(listen=Listen("127.0.0.1", ingress_port)),
        admin=AdminConfig(listen=Listen("127.0.0.1", admin_port)),
    )


async def tour(duration: float | None, requests: int, out=sys.stdout) -> int:
    services = SampleServices()
    urls = await services.start()
    config = demo_config(urls, _free_or_any(8470), _free_or_any(8471))
    daemon = Supervisor(config)
    await daemon.start()
    try:
        ingress = "http://{}:{}".format(*daemon.ingress_address)
        admin = "http://{}:{}".format(*daemon.admin_address)
        print("shadowd demo: sample services with planted differences", file=out)
        for role in (PRIMARY, SECONDARY, CANDIDATE):
            print(f"  {role:<10} {urls[role]}", file=out)
        print(f"  shadowd    {ingress} (proxy)   admin {admin}", file=out)
        print(
            f"             {config.ingress.worker_count()} ingress worker(s) relay and copy, "
            f"{config.analysis.worker_count()} analysis worker(s) diff\n",
            file=out,
            flush=True,
        )
        result = await drive(ingress, requests)
        print(
            f"  {result.sent} requests in {result.seconds:.1f}s, answers by status "
            f"{dict(sorted(result.statuses.items()))}, client failures {result.failures}\n",
            file=out,
        )
        await daemon.settle(timeout=15.0)
        report = daemon.report()
        print(render_table(report), file=out)
        verdict = judge(report, daemon.evidence, daemon.config)
        daemon.metrics.observe_verdict(verdict)
        print(f"\nverdict: {verdict.verdict.upper()}", file=out)
        for reason in verdict.reasons:
            print(f"  - {reason}", file=out)
        cli = _command_name()
        print(
            f"\nExplore while it runs:\n"
            f"  {cli} report --url {admin}\n"
            f"  {cli} verdict --url {admin} --markdown promotion.md\n"
            f"  curl {admin}/api/v1/report\n"
            f"  curl {admin}/metrics",
            file=out,
        )
        if duration is None:
            print("The admin API stays up until Ctrl-C.", file=out, flush=True)
            await _until_interrupted()
        elif duration > 0:
            print(f"The admin API stays up for {duration:g}s.", file=out, flush=True)
            await asyncio.sleep(duration)
    finally:
        await daemon.stop(grace=2.0)
        await services.stop()
    return 0


async def _until_interrupted() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def run_demo(duration: float | None = None, requests: int = 3000) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(tour(duration, requests))
    return 130
