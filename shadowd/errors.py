"""shadowd's own exceptions, caught at the edges (CLI, admin handlers) and turned into messages.

ShadowdError
├── ConfigError            (shadowd.config; also a ValueError)
├── CaptureError           a capture file could not be read or written
│   └── CaptureFormatError the bytes are not a capture file of a known version
└── AdminUnreachable       the CLI could not reach a running daemon's admin API
"""

from __future__ import annotations


class ShadowdError(Exception):
    """Base of every error shadowd raises on purpose."""


class CaptureError(ShadowdError, OSError):
    pass


class CaptureFormatError(CaptureError, ValueError):
    pass


class AdminUnreachable(ShadowdError, ConnectionError):
    pass
