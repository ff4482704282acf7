"""How many client connections an ingress worker holds with the file descriptors it may open.

Every client connection is a descriptor, and so is every pooled connection to a target.
Under the usual soft limit of 1,024 (``ulimit -n``), a flood of idle connections far below
``[ingress] max_connections`` used them all up: ``accept()`` failed, and so did connects to
the primary, so real clients got resets, and nothing was logged or counted. So shadowd
raises its soft limit to the hard one at start (as Go's runtime and nginx's
``worker_rlimit_nofile`` do). Each worker then takes clients only while its pools still have
descriptors left. Past that, a client gets the 503 of ``max_connections`` and is counted.
"""

from __future__ import annotations

import contextlib
import math
import resource
from dataclasses import dataclass

from shadowd.config import Config

# Descriptors a worker needs besides clients and pools: its listener, the hand-off and the
# control channel, log and capture files, DNS lookups. (A WebSocket's tunnel to the primary
# is counted as one more client: ``Ingress.take_tunnel``.)
RESERVED = 64
# Clients a worker takes even when the targets' pools claim every descriptor: the pools
# open connections on demand and rarely use all of them, and 0 would serve no one.
MIN_CLIENTS = 16
# Far above any sane need; some systems report an unlimited hard limit.
CEILING = 1 << 20


def raise_open_files_limit() -> None:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (the children it starts
    inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CEILING if hard == resource.RLIM_INFINITY else min(hard, CEILING)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        # Refused (a seccomp filter, say): the budget below works with the limit we have.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def open_files_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return CEILING if soft == resource.RLIM_INFINITY else soft


@dataclass(frozen=True, slots=True)
class ClientBudget:
    share: int  # this worker's share of [ingress] max_connections
    clients: int  # what it takes: the share, or fewer when descriptors run short
    open_files: int  # the soft limit the budget was made for
    pooled: int  # descriptors the targets' pools may hold

    @property
    def short(self) -> bool:
        return self.clients < self.share

    def explain(self) -> str:
        """Why fewer clients than configured, and what to change (for the log)."""
        return (
            f"ingress.max_connections: each ingress worker takes {self.clients} "
            f"client connections, not {self.share}: the open-files limit is {self.open_files} "
            f"(ulimit -n; LimitNOFILE= in a systemd unit), the targets' pools may hold "
            f"{self.pooled} and {RESERVED} are kept for the rest. Past {self.clients}, "
            f'clients get 503 (shadowd_ingress_rejected_total{{reason="max_connections"}}). '
            f"Raise the limit, or lower targets.*.max_connections"
        )


def client_budget(config: Config, open_files: int) -> ClientBudget:
    """What one ingress worker may take: ``max_connections`` is for all of them, split
    evenly (the kernel spreads connections across the workers evenly)."""
    share = math.ceil(config.ingress.max_connections / config.ingress.worker_count())
    pooled = sum(t.max_connections for t in (config.primary, *config.mirror_targets))
    free = open_files - RESERVED - pooled
    return ClientBudget(share, min(share, max(free, MIN_CLIENTS)), open_files, pooled)
