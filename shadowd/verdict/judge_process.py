"""The process that judges the verdict for the supervisor (``shadowd.verdict.schedule``).

It reads requests on standard input and writes verdicts on standard output, each a 4-byte
big-endian length and a pickle (both ends are this package, started by the supervisor). It
lowers its own CPU priority first (nice 19): on a busy host the data plane wins the core.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import sys
from typing import BinaryIO

LENGTH = struct.Struct(">I")


def read_message(stream: BinaryIO) -> bytes | None:
    head = stream.read(LENGTH.size)
    if len(head) < LENGTH.size:
        return None
    (length,) = LENGTH.unpack(head)
    payload = stream.read(length)
    return payload if len(payload) == length else None


def main() -> int:
    with contextlib.suppress(OSError):  # refused (a seccomp filter): the default priority
        os.nice(19)
    from shadowd.verdict.judge import judge

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (payload := read_message(stdin)) is not None:
        report, evidence, config = pickle.loads(payload)
        answer = pickle.dumps(judge(report, evidence, config))
        stdout.write(LENGTH.pack(len(answer)) + answer)
        stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
