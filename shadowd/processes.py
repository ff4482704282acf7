"""Starting shadowd's own child processes (workers, the judge, replay senders)."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import shadowd

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(shadowd.__file__)))


def child_environment() -> dict[str, str]:
    """The environment for ``python -P -m shadowd...``: the child imports the very package
    this process runs from, installed or not, and never a ``./shadowd`` in the working
    directory (``-P`` keeps that off ``sys.path``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


async def start_module(module: str, *args: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """``python -P -m module args...`` with ``child_environment()``; ``kwargs`` go to
    ``asyncio.create_subprocess_exec`` (pipes, ``pass_fds``, ``limit``)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-m", module, *args, env=child_environment(), **kwargs
    )
