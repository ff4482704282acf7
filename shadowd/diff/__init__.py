"""The diff engine: what differs between a reference answer (primary) and another."""

from shadowd.diff.engine import compare_answers, diff_exchange
from shadowd.diff.model import Difference, DiffKind, ExchangeDiff

__all__ = ["DiffKind", "Difference", "ExchangeDiff", "compare_answers", "diff_exchange"]
