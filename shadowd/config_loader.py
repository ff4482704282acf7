"""Reading a TOML config into ``shadowd.config`` objects, reporting every problem at once.

The schema is declarative: each section lists its keys with a reader that converts the TOML
value or explains what is wrong. Unknown keys are errors (with a suggestion), so a typo never
passes silently.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import ipaddress
import os
import re
import socket
import ssl
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shadowd.capture.format import MAGIC
from shadowd.config import (
    DEFAULT_IGNORED_HEADERS,
    RULE_ACTIONS,
    AdminConfig,
    AnalysisConfig,
    CaptureConfig,
    Config,
    ConfigError,
    DiffConfig,
    DiffRule,
    EndpointsConfig,
    IngressConfig,
    LoggingConfig,
    MirrorConfig,
    NoiseConfig,
    StreamConfig,
    TargetConfig,
    VerdictConfig,
)
from shadowd.config_readers import (
    Invalid,
    Reader,
    boolean,
    duration,
    existing_file,
    file_path,
    header_name,
    header_table,
    host_header,
    integer,
    json_path,
    kind_of,
    listen,
    method,
    number,
    one_of,
    redact_path,
    redis_url,
    regex,
    removable_header,
    route_template,
    size,
    stream_name,
    string,
    strings,
    token_file,
    weights,
    worker_count,
)

# -- the schema: TOML key -> (dataclass field, reader) ---------------------------------------
INGRESS = {
    "mode": ("mode", one_of("proxy", "tap")),
    "listen": ("listen", listen),
    "max_connections": ("max_connections", integer(1)),
    "max_request_body_bytes": ("max_request_body_bytes", size),
    "max_header_bytes": ("max_header_bytes", size),
    "idle_timeout": ("idle_timeout", duration),
    "header_timeout": ("header_timeout", duration),
    "body_timeout": ("body_timeout", duration),
    "workers": ("workers", worker_count),
}
ANALYSIS = {
    "workers": ("workers", worker_count),
    "queue_bytes": ("queue_bytes", size),
    "snapshot_interval": ("snapshot_interval", duration),
    "nice": ("nice", integer(0, 19)),
}
STREAM = {
    "backend": ("backend", one_of("local", "redis")),
    "url": ("url", redis_url),
    "password_file": ("password_file", token_file),
    "key": ("key", stream_name),
    "group": ("group", stream_name),
    "consumer": ("consumer", stream_name),
    "maxlen": ("maxlen", integer(1_000, 1_000_000_000)),
    "claim_idle": ("claim_idle", duration),
    "batch": ("batch", integer(1, 10_000)),
    "view": ("view", one_of("instance", "fleet")),
}
TARGET = {
    "url": ("url", string),
    "timeout": ("timeout", duration),
    "connect_timeout": ("connect_timeout", duration),
    "max_connections": ("max_connections", integer(1)),
    "host_header": ("host_header", host_header),
    "set_headers": ("set_headers", header_table),
    "remove_headers": ("remove_headers", lambda v: frozenset(strings(removable_header)(v))),
    "tls_verify": ("tls_verify", boolean),
    "ca_file": ("ca_file", existing_file),
}
MIRROR = {
    "enabled": ("enabled", boolean),
    "sample_rate": ("sample_rate", number(0.0, 1.0)),
    "methods": ("methods", lambda v: frozenset(strings(method)(v))),
    "include_paths": ("include_paths", strings(regex)),
    "exclude_paths": ("exclude_paths", strings(regex)),
    "queue_size": ("queue_size", integer(1)),
    "max_in_flight": ("max_in_flight", integer(1)),
    "max_body_bytes": ("max_body_bytes", size),
    "max_pending_bytes": ("max_pending_bytes", size),
    "max_answer_bytes": ("max_answer_bytes", size),
    "strip_conditional": ("strip_conditional", boolean),
    "breaker_failures": ("breaker_failures", integer(1, 1_000_000)),
    "breaker_backoff": ("breaker_backoff", duration),
}
ENDPOINTS = {
    "max": ("max", integer(1, 100_000)),
    "templates": ("templates", strings(route_template)),
}
DIFF = {
    "ignore_headers": ("ignore_headers", lambda v: frozenset(strings(header_name)(v))),
    "also_ignore_headers": (None, lambda v: frozenset(strings(header_name)(v))),
    "compare_headers": ("compare_headers", boolean),
    "max_body_bytes": ("max_body_bytes", size),
    "samples_per_endpoint": ("samples_per_endpoint", integer(0, 10_000)),
    "max_fields_per_endpoint": ("max_fields_per_endpoint", integer(1, 100_000)),
    "noise_relative": ("noise_relative", number(0.0, 1.0)),
    "noise_absolute": ("noise_absolute", number(0.0, 1.0)),
}
NOISE = {
    "primary_probe": ("primary_probe", number(0.0, 1.0)),
}
RULE = {
    "name": ("name", string),
    "why": ("why", string),
    "action": ("action", one_of(*RULE_ACTIONS)),
    "endpoint": ("endpoint", string),
    "path": ("path", json_path),
    "header": ("header", header_name),
    "absolute": ("absolute", number(0.0)),
    "relative": ("relative", number(0.0)),
    "key": ("key", string),
    "pattern": ("pattern", regex),
    "replacement": ("replacement", string),
}
CAPTURE = {
    "path": ("path", file_path),
    "max_bytes": ("max_bytes", size),
    "max_age": ("max_age", duration),
    "keep_files": ("keep_files", integer(1, 100_000)),
    "buffer_records": ("buffer_records", integer(1)),
    "redact_headers": ("redact_headers", lambda v: frozenset(strings(header_name)(v))),
    "redact_body_fields": ("redact_body_fields", strings(redact_path)),
    "redact_query_params": ("redact_query_params", lambda v: frozenset(strings()(v))),
}
ADMIN = {
    "listen": ("listen", listen),
    "token_file": ("token_file", token_file),
    "allowed_hosts": ("allowed_hosts", strings()),
}
VERDICT = {
    "min_exchanges": ("min_exchanges", integer(0)),
    "min_exchanges_per_endpoint": ("min_exchanges_per_endpoint", integer(0)),
    "max_divergence_ratio": ("max_divergence_ratio", number(0.0, 1.0)),
    "max_error_rate_increase": ("max_error_rate_increase", number(0.0, 1.0)),
    "max_latency_regression_p50": ("max_latency_regression_p50", number(0.0)),
    "max_latency_regression_p99": ("max_latency_regression_p99", number(0.0)),
    "significance": ("significance", number(above=0.0, high=0.5)),
    "warmup_exchanges": ("warmup_exchanges", integer(0, 500)),
    "warmup_seconds": ("warmup_seconds", number(0.0)),
    "max_db_calls_increase": ("max_db_calls_increase", number(0.0)),
    "max_cache_hit_drop": ("max_cache_hit_drop", number(0.0, 1.0)),
    "exclude_endpoints": ("exclude_endpoints", strings()),
    "endpoint_weights": ("endpoint_weights", weights),
    "owner": ("owner", string),
    "expected_result": ("expected_result", string),
    "rollback": ("rollback", string),
}
LOGGING = {
    "level": ("level", one_of("debug", "info", "warning", "error")),
    "format": ("format", one_of("text", "json")),
    "access_log": ("access_log", boolean),
}
SECTIONS: dict[str, Mapping[str, tuple[str | None, Reader]]] = {
    "ingress": INGRESS,
    "analysis": ANALYSIS,
    "stream": STREAM,
    "targets": {},  # nested tables, read by _targets
    "mirror": MIRROR,
    "endpoints": ENDPOINTS,
    "diff": DIFF,
    "noise": NOISE,
    "capture": CAPTURE,
    "admin": ADMIN,
    "verdict": VERDICT,
    "logging": LOGGING,
}
TARGET_NAMES = ("primary", "secondary", "candidate")


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{self.source}: {key}: {message}")


def _unknown(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key.split(".")[-1], known, n=1)
    return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")


def _read_table(
    data: Any, prefix: str, schema: Mapping[str, tuple[str | None, Reader]], problems: _Problems
) -> dict[str, Any]:
    """Read the known keys of one TOML table; record a problem for anything else."""
    values: dict[str, Any] = {}
    if not isinstance(data, dict):
        problems.add(prefix, f"must be a table ([{prefix}]), got {kind_of(data)}")
        return values
    for key, raw in data.items():
        spec = schema.get(key)
        if spec is None:
            problems.add(f"{prefix}.{key}", _unknown(key, list(schema)))
            continue
        field, reader = spec
        try:
            values[field or key] = reader(raw)
        except Invalid as exc:
            problems.add(f"{prefix}.{key}", str(exc))
    return values


def _rules(data: Any, problems: _Problems) -> tuple[DiffRule, ...]:
    """``[[diff.rules]]``: each rule needs a name, a why, an action and a place to act."""
    if not isinstance(data, list):
        problems.add("diff.rules", "must be an array of tables ([[diff.rules]])")
        return ()
    rules = []
    names: set[str] = set()
    for i, raw in enumerate(data, start=1):
        prefix = f"diff.rules[{i}]"
        known = len(problems.items)
        values = _read_table(raw, prefix, RULE, problems)
        if len(problems.items) > known:
            continue  # the rule's own checks would only echo a value already refused
        missing = [k for k in ("name", "why", "action") if k not in values]
        for key in missing:
            if isinstance(raw, dict) and key not in raw:
                problems.add(f"{prefix}.{key}", "is required: every rule says what it is and why")
        if missing:
            continue
        action = values["action"]
        if "path" in values and "header" in values:
            problems.add(prefix, "give either path or header, not both")
            continue
        if "path" not in values and "header" not in values:
            problems.add(prefix, "needs a path (JSON) or a header to act on")
            continue
        if action in ("unordered", "set", "tolerance", "normalize") and "header" in values:
            problems.add(f"{prefix}.action", f"{action!r} acts on JSON paths, not headers")
            continue
        if action == "tolerance" and not values.get("absolute") and not values.get("relative"):
            problems.add(prefix, "a tolerance rule needs absolute or relative")
            continue
        if action == "normalize" and "pattern" not in values:
            problems.add(f"{prefix}.pattern", "is required for a normalize rule")
            continue
        if action == "normalize":
            try:  # the diff applies it with re.sub, which reads the replacement eagerly
                re.sub(values["pattern"], values.get("replacement", ""), "")
            except re.error as exc:
                problems.add(f"{prefix}.replacement", f"is not valid for the pattern ({exc})")
                continue
        if values["name"] in names:
            problems.add(f"{prefix}.name", f"{values['name']!r} is used by another rule")
            continue
        names.add(values["name"])
        rules.append(DiffRule(**values))
    return tuple(rules)


def _target(name: str, data: Any, problems: _Problems) -> TargetConfig | None:
    prefix = f"targets.{name}"
    values = _read_table(data, prefix, TARGET, problems)
    url = values.pop("url", None)
    if url is None:
        if isinstance(data, dict) and "url" not in data:
            problems.add(f"{prefix}.url", "is required")
        return None
    # urlsplit silently drops tabs and newlines: refuse them before it sees the URL.
    if any(c <= " " or c >= "\x7f" for c in url):
        problems.add(
            f"{prefix}.url",
            f"must be ASCII without spaces or control characters (percent-encode): {url!r}",
        )
        return None
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL" for "http://[::1"
        problems.add(f"{prefix}.url", f"is not a valid URL ({exc}): {url!r}")
        return None
    try:
        port = parts.port
    except ValueError:
        problems.add(f"{prefix}.url", f"has an invalid port: {url!r}")
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.add(f"{prefix}.url", f"must be an http:// or https:// URL, got {url!r}")
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        problems.add(
            f"{prefix}.url",
            "must not carry a query, a fragment or credentials (use set_headers for credentials)",
        )
        return None
    if "host_header" in values and any(
        n.lower() == "host" for n, _ in values.get("set_headers", ())
    ):
        problems.add(f"{prefix}.host_header", "give host_header or set_headers Host, not both")
        return None
    if name == "primary":
        values.setdefault("timeout", 30.0)
    return TargetConfig(
        name=name,
        url=url,
        scheme=parts.scheme,
        host=parts.hostname,
        port=port or (443 if parts.scheme == "https" else 80),
        base_path=parts.path.rstrip("/"),
        **values,
    )


def parse_config(data: dict[str, Any], source: str, digest: str = "") -> Config:
    """Validate a parsed TOML document. Raises ``ConfigError`` with every problem found."""
    problems = _Problems(source)
    sections: dict[str, dict[str, Any]] = {}
    raw_diff = data.get("diff")
    rules: tuple[DiffRule, ...] = ()
    if isinstance(raw_diff, dict) and "rules" in raw_diff:
        raw_diff = dict(raw_diff)
        rules = _rules(raw_diff.pop("rules"), problems)
        data = {**data, "diff": raw_diff}
    for name, body in data.items():
        if name not in SECTIONS:
            problems.add(name, _unknown(name, list(SECTIONS)).replace("key", "section"))
        elif name != "targets":
            sections[name] = _read_table(body, name, SECTIONS[name], problems)
    targets: dict[str, TargetConfig | None] = {}
    raw_targets = data.get("targets", {})
    if not isinstance(raw_targets, dict):
        problems.add("targets", "must hold [targets.primary], [targets.candidate] tables")
        raw_targets = {}
    for name, body in raw_targets.items():
        if name not in TARGET_NAMES:
            problems.add(
                f"targets.{name}",
                _unknown(name, list(TARGET_NAMES)).replace(
                    "unknown key", "unknown target (primary, secondary or candidate)"
                ),
            )
            continue
        targets[name] = _target(name, body, problems)
    for required in ("primary", "candidate"):
        if required not in raw_targets:
            problems.add(f"targets.{required}", f"is required ([targets.{required}] with a url)")
    diff = sections.get("diff", {})
    if rules:
        diff["rules"] = rules
    also = diff.pop("also_ignore_headers", frozenset())
    if also:
        diff["ignore_headers"] = diff.get("ignore_headers", DEFAULT_IGNORED_HEADERS) | also
    capture = sections.get("capture")
    raw_capture = data.get("capture")
    if isinstance(raw_capture, dict) and "path" not in raw_capture:
        problems.add("capture.path", "is required when [capture] is present")
    ingress = IngressConfig(**sections.get("ingress", {}))
    admin = AdminConfig(**sections.get("admin", {}))
    _cross_checks(ingress, admin, targets, problems)
    analysis = AnalysisConfig(**sections.get("analysis", {}))
    stream = StreamConfig(**sections.get("stream", {}))
    _stream_checks(stream, analysis, problems)
    kept = diff.get("max_body_bytes", DiffConfig().max_body_bytes)
    mirror = MirrorConfig(**{"max_answer_bytes": kept, **sections.get("mirror", {})})
    if mirror.max_answer_bytes < kept:
        problems.add(
            "mirror.max_answer_bytes",
            f"must be at least diff.max_body_bytes ({kept} bytes): answers kept whole for the "
            "diff are read whole",
        )
    noise = NoiseConfig(**sections.get("noise", {}))
    if noise.primary_probe > 0 and targets.get("secondary") is not None:
        problems.add(
            "noise.primary_probe",
            "is for running without a secondary; [targets.secondary] already measures noise "
            "(remove one of them)",
        )
    if problems.items:
        raise ConfigError(problems.items)
    primary, candidate = targets["primary"], targets["candidate"]
    assert primary is not None and candidate is not None
    return Config(
        source=source,
        primary=primary,
        candidate=candidate,
        secondary=targets.get("secondary"),
        ingress=ingress,
        analysis=analysis,
        stream=stream,
        mirror=mirror,
        endpoints=EndpointsConfig(**sections.get("endpoints", {})),
        diff=DiffConfig(**diff),
        noise=noise,
        capture=CaptureConfig(**capture) if capture and "path" in capture else None,
        admin=admin,
        verdict=VerdictConfig(**sections.get("verdict", {})),
        logging=LoggingConfig(**sections.get("logging", {})),
        digest=digest,
    )


def _is_loopback(host: str) -> bool:
    address = _ip(host)
    if address is None:
        name = host.lower().rstrip(".")
        return name == "localhost" or name.endswith(".localhost")
    return address.is_loopback


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a literal host stands for, also in the legacy IPv4 spellings the
    resolver accepts ("127.1", "2130706433", "0x7f.1"); None for a name."""
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _overlap(one: str, other: str) -> bool:
    """Two listen hosts would claim the same address on one port."""
    a, b = _ip(one), _ip(other)
    if one.lower() == other.lower() or (a is not None and a == b):
        return True
    if (a is not None and a.is_unspecified) or (b is not None and b.is_unspecified):
        return True
    # "localhost" binds every loopback address it resolves to, 127.0.0.1 among them.
    return (a is None and _is_loopback(one) and _is_loopback(other)) or (
        b is None and _is_loopback(other) and _is_loopback(one)
    )


def _this_host(host: str) -> bool:
    """Connecting to it reaches this machine: loopback, or the unspecified address (which
    Linux and macOS route to the local host)."""
    address = _ip(host)
    return _is_loopback(host) or (address is not None and address.is_unspecified)


def _stream_checks(stream: StreamConfig, analysis: AnalysisConfig, problems: _Problems) -> None:
    # A record unacknowledged for claim_idle is taken over by another worker. A live worker
    # acknowledges with each snapshot, so claim_idle must leave it several snapshots' time,
    # or its records would be counted twice (once by it, once by the claimer).
    if stream.claim_idle < max(1.0, 3 * analysis.snapshot_interval):
        problems.add(
            "stream.claim_idle",
            f"must be at least 1s and 3 x analysis.snapshot_interval "
            f"({3 * analysis.snapshot_interval:g}s): a live worker acknowledges with each "
            "snapshot, and an entry idle this long is handed to another worker",
        )


def _cross_checks(
    ingress: IngressConfig,
    admin: AdminConfig,
    targets: dict[str, TargetConfig | None],
    problems: _Problems,
) -> None:
    if ingress.listen.port == admin.listen.port != 0 and _overlap(
        ingress.listen.host, admin.listen.host
    ):
        problems.add("admin.listen", f"is the same address as ingress.listen ({ingress.listen})")
    if not _is_loopback(admin.listen.host) and admin.token_file is None:
        problems.add(
            "admin.listen",
            "an admin API on a non-loopback address requires admin.token_file (a bearer token)",
        )
    for name, target in targets.items():
        if target is None:
            continue
        listen_host = ingress.listen.host
        listen_ip, target_ip = _ip(listen_host), _ip(target.host)
        same_port = target.port == ingress.listen.port
        same_host = (
            target.host.lower() == listen_host.lower()
            or (target_ip is not None and target_ip == listen_ip)
            or (_this_host(target.host) and _this_host(listen_host))
            # listening on every address: any host name may resolve to one of them
            or (listen_ip is not None and listen_ip.is_unspecified)
        )
        if same_port and same_host:
            problems.add(
                f"targets.{name}.url",
                f"points at shadowd's own ingress ({ingress.listen}): requests would loop",
            )


def check_environment(config: Config) -> None:
    """What ``run`` needs from this machine besides a valid file: listen hosts that resolve to
    local addresses, a capture path it can create and append to, CA files that load. Run by
    both ``check-config`` and ``run`` (before anything listens), so they agree. Nothing is
    left behind: probes bind to port 0 and write only temporary files. Raises ``ConfigError``.
    """
    problems = _Problems(config.source)
    for key, where in (
        ("ingress.listen", config.ingress.listen),
        ("admin.listen", config.admin.listen),
    ):
        problem = _listen_problem(where.host)
        if problem:
            problems.add(key, problem)
    if config.capture is not None:
        problem = _capture_problem(config.capture.path)
        if problem:
            problems.add("capture.path", problem)
    for target in (config.primary, *config.mirror_targets):
        if target.scheme == "https" and target.ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(target.ca_file))
            except (ssl.SSLError, OSError) as exc:
                problems.add(
                    f"targets.{target.name}.ca_file",
                    f"cannot be loaded as PEM CA certificates ({exc})",
                )
    if problems.items:
        raise ConfigError(problems.items)


def _listen_problem(host: str) -> str | None:
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        return f"cannot resolve host {host!r} ({getattr(exc, 'strerror', None) or exc})"
    for family, kind, proto, _, address in infos:
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:
            continue  # a family this host lacks (no IPv6): the listener skips it as well
        with probe:
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    return f"{host!r} ({address[0]}) is not an address of this machine"
                return f"cannot listen on {host!r} ({address[0]}): {exc.strerror or exc}"
    return None


def _capture_problem(path: Path) -> str | None:
    """Why the writer could not create, append to or rotate ``path`` (it creates missing
    folders)."""
    try:
        return _capture_problem_at(path)
    except OSError as exc:  # a name too long, a folder above it that cannot be searched...
        return f"cannot use {path}: {exc.strerror or exc}"


def _capture_problem_at(path: Path) -> str | None:
    if path.is_dir():
        return f"{path} is a directory: give a file path such as {path / 'live.shadow'}"
    if path.exists() or path.is_symlink():
        if not path.is_file():
            return f"{path} is not a regular file"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            return f"cannot append to {path}: {exc.strerror or exc}"
        os.close(fd)
        with path.open("rb") as existing:
            start = existing.read(len(MAGIC))
        if start and start != MAGIC[: len(start)]:
            return f"{path} exists and is not a shadowd capture file: move it or pick another path"
        if path.stat().st_uid != os.geteuid() != 0:
            return f"{path} belongs to another user: shadowd could not make it private (0600)"
    # Rotation renames the file and starts a new one beside it: the folder must take files.
    folder = path.parent
    while not folder.exists():
        if folder == folder.parent:
            break
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot create {path}: {folder} is not a directory"
    try:
        if folder == path.parent:
            with tempfile.TemporaryFile(dir=folder):
                pass
        else:
            os.rmdir(tempfile.mkdtemp(dir=folder))
    except OSError as exc:
        what = "a file" if folder == path.parent else "folders"
        return f"cannot create {path}: cannot create {what} in {folder} ({exc.strerror or exc})"
    return None


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file. Raises ``ConfigError`` listing every problem."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not UTF-8 text ({exc.reason})"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: TOML syntax: {exc}"]) from exc
    return parse_config(data, source, hashlib.sha256(raw).hexdigest())


__all__ = ["check_environment", "load_config", "parse_config"]
