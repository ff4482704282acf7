"""The one model every stage passes along: a request and each target's answer.

Headers are kept as raw ``(name, value)`` byte pairs, exactly as they crossed the wire
(order and case preserved); stages that need text decode them as latin-1 themselves. The hot
path never decodes a header it does not have to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

Headers = list[tuple[bytes, bytes]]

PRIMARY = "primary"
SECONDARY = "secondary"
CANDIDATE = "candidate"
TARGET_NAMES = (PRIMARY, SECONDARY, CANDIDATE)


@dataclass(slots=True)
class Request:
    """What the client sent, after the body was read in full (bounded by the ingress limit)."""

    method: str
    target: str  # origin-form request target: path plus query, as received ("/a/b?x=1")
    headers: Headers
    body: bytes
    received_at: float  # wall-clock seconds (time.time()) when the request head arrived
    client: str = ""  # peer address of the client, "" when unknown
    http_version: str = "1.1"

    @property
    def path(self) -> str:
        q = self.target.find("?")
        return self.target if q < 0 else self.target[:q]

    @property
    def query(self) -> str:
        q = self.target.find("?")
        return "" if q < 0 else self.target[q + 1 :]


# An answer body read only up to [mirror] max_answer_bytes: what it holds is not known, only
# that it is at least that large (``body_size`` counts what was read, or for the primary,
# whose client gets every byte, all of it).
CUT_DIGEST: Final = "cut"


@dataclass(slots=True)
class Answer:
    """One target's answer to an exchange's request.

    ``body`` holds the whole body when ``body_size <= limit``; past the limit it holds nothing
    and ``body_digest`` (blake2b-128 hex of the whole body) stands in for it. ``error`` is set
    (and ``status`` is 0) when no complete answer arrived: one of ``ERROR_KINDS``.
    """

    target: str
    status: int = 0
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    body_size: int = 0
    body_digest: str | None = None  # set only when the body was too large to keep
    # (CUT_DIGEST: read only up to [mirror] max_answer_bytes; body_size is how far)
    latency: float = 0.0  # seconds from the first byte sent to the last byte received
    error: str | None = None
    # Its Server-Timing metrics once parsed (``shadowd.diff.timing.timing_of``): the diff,
    # the statistics, the series and the usage evidence each read them, and the headers of
    # an answer do not change once it is analysed.
    parsed_timing: dict[str, dict[str, str | float]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def body_truncated(self) -> bool:
        return self.body_digest is not None

    def header(self, name: bytes) -> bytes | None:
        """First value of a header, looked up case-insensitively (``name`` in lower case)."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


# Why an answer is missing. Kept small and closed: these become metric label values.
ERROR_TIMEOUT = "timeout"  # the request was sent; the whole answer did not arrive in time
ERROR_POOL_TIMEOUT = "pool_timeout"  # the deadline passed waiting for a free connection
ERROR_CONNECT_TIMEOUT = "connect_timeout"  # the deadline passed while connecting
ERROR_CONNECT = "connect"
ERROR_RESET = "reset"  # the connection closed or reset before the answer was complete
ERROR_PROTOCOL = "protocol"  # the bytes were not valid HTTP/1.x
ERROR_TOO_LARGE = "too_large"  # an answer head (or trailer) past MAX_HEAD_BYTES
ERROR_INTERNAL = "internal"  # shadowd itself failed handling the answer (a bug, logged)
ERROR_KINDS = (
    ERROR_TIMEOUT,
    ERROR_CONNECT,
    ERROR_RESET,
    ERROR_PROTOCOL,
    ERROR_TOO_LARGE,
    ERROR_POOL_TIMEOUT,
    ERROR_CONNECT_TIMEOUT,
    ERROR_INTERNAL,
)
TIMEOUT_KINDS = frozenset({ERROR_TIMEOUT, ERROR_POOL_TIMEOUT, ERROR_CONNECT_TIMEOUT})


@dataclass(slots=True)
class Exchange:
    """A request and the answers of every target it was sent to, keyed by target name."""

    id: int
    request: Request
    endpoint: str  # "GET /users/{id}"-style key used for aggregation
    answers: dict[str, Answer] = field(default_factory=dict)

    @property
    def primary(self) -> Answer | None:
        return self.answers.get(PRIMARY)

    @property
    def candidate(self) -> Answer | None:
        return self.answers.get(CANDIDATE)

    @property
    def secondary(self) -> Answer | None:
        return self.answers.get(SECONDARY)
