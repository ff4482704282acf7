"""shadowd: mirror production HTTP traffic to a candidate, diff the answers, judge promotion."""

__version__ = "0.1.0"
