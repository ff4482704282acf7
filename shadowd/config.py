"""Configuration: one TOML file, validated once into frozen objects.

The rest of the code never re-reads the file or re-checks a value: everything it needs is a
typed attribute here, with its default. Every problem found is reported at once, each as
``file: key: what is wrong`` (see ``ConfigError``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadowd.errors import ShadowdError

MIB = 1024 * 1024

DEFAULT_MIRROR_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Headers whose values differ between any two answers by construction. Their presence is
# still compared; their values are not.
DEFAULT_IGNORED_HEADERS = frozenset(
    {
        "date",
        "server",
        "x-request-id",
        "x-trace-id",
        "traceparent",
        "tracestate",
        "set-cookie",
        "etag",
        "last-modified",
        "expires",
        "age",
        "via",
        "x-amzn-trace-id",
        "x-b3-traceid",
        "x-b3-spanid",
        "server-timing",  # compared metric by metric instead (shadowd.diff.timing)
        "content-length",  # bodies are compared themselves
        "transfer-encoding",
        "connection",
        "keep-alive",
    }
)


class ConfigError(ShadowdError, ValueError):
    """A config file could not be accepted. ``problems`` holds one ``file: key: problem`` each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class IngressConfig:
    mode: str = "proxy"  # "proxy" | "tap"
    listen: Listen = Listen("127.0.0.1", 8470)
    max_connections: int = 10_000
    max_request_body_bytes: int = 10 * MIB
    max_header_bytes: int = 64 * 1024
    idle_timeout: float = 75.0  # seconds a keep-alive client connection may stay idle
    header_timeout: float = 60.0  # seconds to send a whole request head (nginx's default)
    # seconds to send a whole request body once its head is in (nginx's client_body_timeout)
    body_timeout: float = 60.0
    # Ingress (data plane) processes sharing the listener; 0 = "auto", one per core.
    workers: int = 0

    def worker_count(self) -> int:
        return self.workers or max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class TargetConfig:
    name: str  # "primary" | "secondary" | "candidate"
    url: str  # as written in the file
    scheme: str  # "http" | "https"
    host: str
    port: int
    base_path: str = ""  # path prefix from the URL ("" or "/prefix", no trailing slash)
    timeout: float = 10.0  # seconds for a whole answer (headers and body)
    connect_timeout: float = 2.0
    max_connections: int = 256  # pooled keep-alive connections to this target
    host_header: str | None = None  # literal Host to send; None keeps the client's Host
    set_headers: tuple[tuple[str, str], ...] = ()  # added or replaced on requests to this target
    remove_headers: frozenset[str] = frozenset()  # lower-case names dropped from requests
    tls_verify: bool = True
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    enabled: bool = True  # the kill switch's state at start
    sample_rate: float = 1.0  # 0..1, fraction of eligible requests copied
    methods: frozenset[str] = DEFAULT_MIRROR_METHODS
    include_paths: tuple[str, ...] = ()  # regexes (re.search on the path); empty = every path
    exclude_paths: tuple[str, ...] = ()  # regexes; a match is never mirrored
    queue_size: int = 1024  # exchanges waiting for an in-flight slot; beyond it, dropped
    max_in_flight: int = 128  # exchanges being sent to candidate/secondary at once
    max_body_bytes: int = 1 * MIB  # requests with larger bodies are not mirrored (counted)
    # Bodies held for exchanges still waiting for answers (per ingress worker); past it an
    # exchange is dropped and counted ("pending_bytes"): a hung candidate cannot grow memory.
    max_pending_bytes: int = 64 * MIB
    # A copy's answer is read this far and no further: past it the copy's connection is
    # closed and the answer compared by status, headers and "this large" only (the
    # primary's kept copy likewise, while its client gets every byte). A candidate that
    # answers gigabytes must not take the loop that relays production. In a file it
    # defaults to diff.max_body_bytes: between the two, bodies are compared by digest.
    max_answer_bytes: int = 1 * MIB
    # Copies go without If-None-Match / If-Modified-Since (each instance has its own ETags);
    # when the primary answers 304 to the client, the exchange is counted, not diffed.
    strip_conditional: bool = True
    breaker_failures: int = 5  # consecutive transport failures that open a target's breaker
    breaker_backoff: float = 1.0  # seconds it stays open at first (doubling, up to 30 s)


@dataclass(frozen=True, slots=True)
class EndpointsConfig:
    max: int = 200  # distinct endpoints tracked; the rest are counted under "other"
    templates: tuple[str, ...] = ()  # "METHOD /users/{id}" or "/users/{id}" route templates


RULE_ACTIONS = ("ignore", "tolerance", "unordered", "set", "normalize")


@dataclass(frozen=True, slots=True)
class DiffRule:
    """A named, explained exception to "every difference counts" (``[[diff.rules]]``)."""

    name: str
    why: str
    action: str  # one of RULE_ACTIONS
    endpoint: str | None = None  # glob on the endpoint name ("GET /users/*"); None: all
    path: str | None = None  # JSON path; [*] and * wildcards; covers what is beneath it
    header: str | None = None  # a header name (lower case) instead of a path
    absolute: float = 0.0  # tolerance: |a - b| <= absolute ...
    relative: float = 0.0  # ... or |a - b| <= relative * max(|a|, |b|)
    key: str | None = None  # unordered/set arrays of objects: compare them by this field
    pattern: str | None = None  # normalize: regex replaced on both sides before comparing
    replacement: str = ""


@dataclass(frozen=True, slots=True)
class DiffConfig:
    ignore_headers: frozenset[str] = DEFAULT_IGNORED_HEADERS  # lower-case names
    compare_headers: bool = True
    max_body_bytes: int = 1 * MIB  # larger bodies are compared by digest and size only
    samples_per_endpoint: int = 20
    max_fields_per_endpoint: int = 500  # distinct field paths; the rest under "<other>"
    # A field is a divergence only when the candidate differs more often than the secondary
    # by both margins (see shadowd.noise): relative to both counts, and absolute to exchanges.
    noise_relative: float = 0.20
    noise_absolute: float = 0.0003
    rules: tuple[DiffRule, ...] = ()


@dataclass(frozen=True, slots=True)
class NoiseConfig:
    # Without a secondary: the share (0..1) of mirrored requests also sent to the primary a
    # second time, on the copy path, whose answers stand for the secondary's (docs/verdict.md).
    # 0 is off. It is extra load on the primary: this share of the mirrored requests, again.
    primary_probe: float = 0.0


PROBE_TARGET = "secondary"  # the probe's answers are the noise baseline's, under its name


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    path: Path
    max_bytes: int = 256 * MIB  # rotate when a file reaches this size
    max_age: float = 3600.0  # seconds; rotate when a file is this old
    keep_files: int = 10
    buffer_records: int = 10_000  # records waiting for the disk; beyond it, dropped
    redact_headers: frozenset[str] = frozenset()  # extra header names (lower-case)
    redact_body_fields: tuple[str, ...] = ()  # JSON paths like "$.password"
    redact_query_params: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: Listen = Listen("127.0.0.1", 8471)
    token_file: Path | None = None
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides the listen address


@dataclass(frozen=True, slots=True)
class VerdictConfig:
    min_exchanges: int = 500
    min_exchanges_per_endpoint: int = 0
    max_divergence_ratio: float = 0.01  # divergent / exchanges, overall and per endpoint
    max_error_rate_increase: float = 0.01  # candidate error rate minus primary's
    max_latency_regression_p50: float = 0.10  # relative: 0.10 = candidate 10 % slower
    max_latency_regression_p99: float = 0.25
    significance: float = 0.05  # tests must reach this p-value; intervals are 1 - it
    warmup_exchanges: int = 50  # each endpoint's first exchanges: not in the latency evidence
    warmup_seconds: float = 0.0  # and/or its first seconds (from its first exchange)
    # Work behind the answers, as the companion middleware reports it (shadowd.middleware):
    max_db_calls_increase: float = 0.25  # relative: 0.25 = 25 % more DB calls per request
    max_cache_hit_drop: float = 0.10  # cache hit ratio down by 10 points (0.91 -> 0.81)
    exclude_endpoints: tuple[str, ...] = ()  # endpoint names left out of the verdict
    endpoint_weights: tuple[tuple[str, float], ...] = ()  # weight in the overall divergence
    owner: str = ""
    expected_result: str = ""
    rollback: str = ""


@dataclass(frozen=True, slots=True)
class AnalysisConfig:
    """The analysis plane: processes that diff the exchange stream (``shadowd.analysis``)."""

    workers: int = 0  # 0 = "auto": one per two cores (the ingress takes the rest)
    # Bytes of exchange records an ingress worker lets wait for the analysis plane; past it
    # records are shed and counted (reason "diff_backlog"), never queued on the data plane.
    queue_bytes: int = 16 * MIB
    snapshot_interval: float = 1.0  # seconds between two statistics snapshots of a worker
    nice: int = 0  # CPU priority of analysis workers below the data plane's (0 = the same)

    def worker_count(self) -> int:
        return self.workers or max(1, (os.cpu_count() or 1) // 2)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """Where the analysis plane reads exchange records from (``shadowd.stream``): the local
    hand-off (``"local"``: embedded, nothing to install) or a Redis stream shared by a fleet
    of ingress/tap instances and analysis workers on any hosts (``"redis"``)."""

    backend: str = "local"  # "local" | "redis"
    url: str = "redis://127.0.0.1:6379/0"  # redis://, rediss:// (TLS) or unix://; no password
    password_file: Path | None = None  # the Redis password (AUTH), 0600, never in the TOML
    key: str = "shadowd:exchanges"  # the stream; snapshots live under "<key>:fleet:*"
    group: str = "shadowd-analysis"  # the consumer group every analysis worker joins
    consumer: str = ""  # this worker's name in the group ("" = "<hostname>.<pid>")
    maxlen: int = 1_000_000  # XADD MAXLEN ~: beyond it the oldest records are trimmed
    claim_idle: float = 30.0  # seconds a record may stay unacknowledged before another
    # worker takes it over (XAUTOCLAIM): a dead worker's records are processed elsewhere
    batch: int = 256  # records per pipelined XADD batch and per XREADGROUP
    view: str = "instance"  # what report/verdict/metrics show without ?scope=: or "fleet"

    @property
    def redis(self) -> bool:
        return self.backend == "redis"


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    format: str = "text"  # "text" | "json"
    access_log: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # the file it came from ("<defaults>" when built in code)
    primary: TargetConfig
    candidate: TargetConfig
    secondary: TargetConfig | None = None
    ingress: IngressConfig = IngressConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    stream: StreamConfig = StreamConfig()
    mirror: MirrorConfig = MirrorConfig()
    endpoints: EndpointsConfig = EndpointsConfig()
    diff: DiffConfig = DiffConfig()
    noise: NoiseConfig = NoiseConfig()
    capture: CaptureConfig | None = None
    admin: AdminConfig = AdminConfig()
    verdict: VerdictConfig = VerdictConfig()
    logging: LoggingConfig = LoggingConfig()
    digest: str = field(default="")  # sha256 of the file's bytes, for reports and captures
    # How the primary's latency was taken, for the verdict's wording: "" = by the mode
    # (inline in proxy mode, on the copy path in tap mode); replay sets "recorded" or
    # "replayed". Not read from the file.
    primary_timing: str = field(default="")

    @property
    def primary_timed(self) -> str:
        """``inline``, ``copy_path``, ``recorded`` (the capture's, another time and load) or
        ``replayed`` (sent by a replay beside the candidate)."""
        if self.primary_timing:
            return self.primary_timing
        return "copy_path" if self.ingress.mode == "tap" else "inline"

    @property
    def probe(self) -> TargetConfig | None:
        """The primary once more, as the noise baseline, when there is no secondary and
        ``[noise] primary_probe`` is on: its answers are filed as the secondary's."""
        if self.secondary is not None or self.noise.primary_probe <= 0:
            return None
        return dataclasses.replace(self.primary, name=PROBE_TARGET)

    @property
    def noise_baseline(self) -> TargetConfig | None:
        """What noise and the copy-path latency are measured on: the secondary, else the
        primary-twice probe, else nothing."""
        return self.secondary if self.secondary is not None else self.probe

    @property
    def mirror_targets(self) -> tuple[TargetConfig, ...]:
        """Targets that receive copies: the candidate, the secondary or the primary-twice
        probe (the primary itself, on the copy path, for ``[noise] primary_probe`` of them)."""
        baseline = self.noise_baseline
        if baseline is None:
            return (self.candidate,)
        return (baseline, self.candidate)


def target_from_url(name: str, url: str, **overrides: Any) -> TargetConfig:
    """Build a target from a URL, for code and tests that do not start from a file."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    scheme = parts.scheme or "http"
    port = parts.port or (443 if scheme == "https" else 80)
    return TargetConfig(
        name=name,
        url=url,
        scheme=scheme,
        host=parts.hostname or "127.0.0.1",
        port=port,
        base_path=parts.path.rstrip("/"),
        **overrides,
    )


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file. Raises ``ConfigError`` listing every problem."""
    from shadowd.config_loader import load_config as load

    return load(path)
