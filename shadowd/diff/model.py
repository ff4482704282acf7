"""What the diff stage says about one pair of answers (reference vs other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class DiffKind(StrEnum):
    STATUS = "status"  # status codes differ
    ERROR = "error"  # one side has no answer (timeout, reset...), the other has
    HEADER = "header"  # a compared header's value differs
    HEADER_MISSING = "header_missing"  # header in reference, absent in other
    HEADER_EXTRA = "header_extra"  # header absent in reference, present in other
    CONTENT_TYPE = "content_type"  # bodies of different media types
    CHANGED = "changed"  # same JSON type, different value
    TYPE = "type"  # JSON type differs (e.g. number vs string; true vs 1)
    NUMBER_TYPE = "number_type"  # equal numbers, integer vs not (100 vs 100.0)
    MISSING = "missing"  # present in reference, absent in other
    EXTRA = "extra"  # absent in reference, present in other
    ARRAY_LENGTH = "array_length"  # arrays of different lengths
    BODY = "body"  # non-JSON bodies differ (bytes/size)
    INVALID_JSON = "invalid_json"  # declared or sniffed JSON that does not parse on one side


# How likely a difference of each kind breaks a client, higher is worse. NUMBER_TYPE is below
# TYPE: the value is the same and lenient clients (JavaScript, Python) read both alike, but
# strictly typed ones (Go, Rust, Java) refuse 100.0 where they decode an integer.
SEVERITY: dict[DiffKind, int] = {
    DiffKind.ERROR: 4,
    DiffKind.STATUS: 4,
    DiffKind.CONTENT_TYPE: 4,
    DiffKind.INVALID_JSON: 4,
    DiffKind.TYPE: 3,
    DiffKind.MISSING: 3,
    DiffKind.NUMBER_TYPE: 2,
    DiffKind.CHANGED: 2,
    DiffKind.ARRAY_LENGTH: 2,
    DiffKind.BODY: 2,
    DiffKind.HEADER: 1,
    DiffKind.HEADER_MISSING: 1,
    DiffKind.EXTRA: 0,
    DiffKind.HEADER_EXTRA: 0,
}


@dataclass(frozen=True, slots=True)
class Difference:
    """One difference between a reference answer (primary) and another (candidate/secondary).

    ``path`` is exact (``$.items[3].price``, ``status``, ``header.x-cache``, ``body``);
    ``generic_path`` is the aggregation key with array indices replaced by ``[*]``
    (``$.items[*].price``). ``reference``/``other`` are JSON-able, shortened values for samples.
    """

    path: str
    generic_path: str
    kind: DiffKind
    reference: Any = None
    other: Any = None


@dataclass(slots=True)
class ExchangeDiff:
    """The diff stage's verdict on one exchange.

    ``candidate``: candidate vs primary. ``secondary``: secondary vs primary (the noise
    baseline), ``None`` when the exchange has no secondary answer. Empty lists mean "same".
    ``overflow`` counts differences not listed because a per-pair cap was reached.
    """

    candidate: list[Difference]
    secondary: list[Difference] | None = None
    overflow: int = 0
    absorbed: dict[str, int] = field(default_factory=dict)  # rule name -> differences absorbed
    # Exact paths of candidate differences that only reorder a set-like array: filled when
    # there is no secondary answer to learn noise from (``shadowd.diff.order``).
    reordered: frozenset[str] = frozenset()

    @property
    def divergent(self) -> bool:
        return bool(self.candidate)
