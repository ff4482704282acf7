"""The view process (see ``shadowd.view``): merged statistics in, report and verdict out.

Messages on standard input, each a 4-byte big-endian length and a pickle (both ends are this
package): ``("merge", delta)``, ``("reset",)``, ``("config", config)``, and two that are
answered on standard output in the order asked: ``("build", status, started_at, reset_at)``
with ``(True, (report_json, beyond_noise))``, and ``("judge",)`` with
``(True, (verdict, its JSON))`` (``(False, traceback)`` when building or judging failed).
It lowers its own CPU priority first: on a busy host the relay and the diffing win the core.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import sys
import traceback
from typing import Any, BinaryIO

from shadowd.processes import die_with_parent

LENGTH = struct.Struct(">I")
NICE = 10  # below the relay and the analysis workers: what a user reads comes last


class View:
    """Cumulative statistics, merged from deltas exactly as the supervisor merges them."""

    def __init__(self, config: Any) -> None:
        import numpy as np

        from shadowd.aggregate import Aggregator
        from shadowd.verdict.evidence import VerdictEvidence

        self.aggregator = Aggregator(config)
        self.evidence = VerdictEvidence(config.endpoints.max)
        # the supervisor's seed: the same deltas give the same evidence on both sides
        self._rng = np.random.default_rng(0x5AD0)
        self.merges = 0
        self._report: dict[str, Any] | None = None
        self._report_merges = -1

    def merge(self, delta: dict[str, Any]) -> None:
        from shadowd.analysis.snapshot import merge_snapshot

        merge_snapshot(self.aggregator, self.evidence, delta, self._rng)
        self.merges += 1

    def reset(self) -> None:
        self.aggregator.reset()
        self.evidence.reset()
        self.merges = 0
        self._report, self._report_merges = None, -1

    def configure(self, config: Any) -> None:
        self.aggregator.config = config
        self._report, self._report_merges = None, -1  # its rules and targets are the config's

    def report(self, status: dict[str, Any] | None) -> dict[str, Any]:
        from shadowd.report import build_report

        self._report = build_report(self.aggregator, status)
        self._report_merges = self.merges
        return self._report

    def build(
        self, status: dict[str, Any], started_at: float, reset_at: float
    ) -> tuple[bytes, list[Any]]:
        import orjson

        self.aggregator.started_at, self.aggregator.reset_at = started_at, reset_at
        report = self.report(status)
        beyond = [(e["endpoint"], e["divergent_beyond_noise_ratio"]) for e in report["endpoints"]]
        return orjson.dumps(report, option=orjson.OPT_NON_STR_KEYS), beyond

    def judge(self) -> Any:
        from shadowd.verdict.judge import judge

        report = self._report
        if report is None or self._report_merges != self.merges:
            report = self.report(None)
        import orjson

        verdict = judge(report, self.evidence, self.aggregator.config)
        # serialised here too: 40 ms for 200 endpoints, not to be spent on the admin's loop
        return verdict, orjson.dumps(verdict.to_json(), option=orjson.OPT_NON_STR_KEYS)


def read_message(stream: BinaryIO) -> bytes | None:
    head = stream.read(LENGTH.size)
    if len(head) < LENGTH.size:
        return None
    (length,) = LENGTH.unpack(head)
    payload = stream.read(length)
    return payload if len(payload) == length else None


def main() -> int:
    die_with_parent()
    with contextlib.suppress(OSError):  # refused (a seccomp filter): the default priority
        os.nice(NICE)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    first = read_message(stdin)
    if first is None:
        return 0
    kind, config = pickle.loads(first)
    assert kind == "config", kind
    view = View(config)
    from shadowd.verdict.stats import load_scipy

    load_scipy()
    while (payload := read_message(stdin)) is not None:
        message = pickle.loads(payload)
        kind = message[0]
        answer: Any
        if kind == "merge":
            view.merge(message[1])
            continue
        if kind == "reset":
            view.reset()
            continue
        if kind == "config":
            view.configure(message[1])
            continue
        try:
            if kind == "build":
                answer = (True, view.build(*message[1:]))
            elif kind == "judge":
                answer = (True, view.judge())
            else:
                raise ValueError(f"view process: unknown message {kind!r}")
        except Exception:  # a bug answers this one request with its traceback, not a death
            answer = (False, traceback.format_exc())
        encoded = pickle.dumps(answer)
        stdout.write(LENGTH.pack(len(encoded)) + encoded)
        stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
