"""Starting shadowd's own child processes (workers, the judge, replay senders)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
from typing import Any

import shadowd

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(shadowd.__file__)))
_PARENT = "SHADOWD_PARENT_PID"  # set for every child: who started it
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def child_environment() -> dict[str, str]:
    """The environment for ``python -P -m shadowd...``: the child imports the very package
    this process runs from, installed or not, and never a ``./shadowd`` in the working
    directory (``-P`` keeps that off ``sys.path``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env[_PARENT] = str(os.getpid())
    return env


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the process that started it dies, however it
    dies. For the children that serve only their parent (the view and fleet processes): a
    supervisor killed with SIGKILL cannot stop them, and one left behind keeps the
    supervisor's stderr open (whoever waits for that pipe to close waits forever) and its
    Redis connection. The ingress workers are not asked: without a supervisor they still
    finish their clients' requests before they stop."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's EOF still ends the child
        return
    parent = os.environ.get(_PARENT)
    if parent is not None and os.getppid() != int(parent):
        os._exit(0)  # the parent died before the request above took effect


async def start_module(module: str, *args: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """``python -P -m module args...`` with ``child_environment()``; ``kwargs`` go to
    ``asyncio.create_subprocess_exec`` (pipes, ``pass_fds``, ``limit``)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-m", module, *args, env=child_environment(), **kwargs
    )
