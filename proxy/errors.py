"""The project's exception tree.

ProxyError
├── ConfigError        a bad setting; names the key and the value (never a secret)
├── UpstreamError      no response from the upstream; 502 or 504 at the boundary
│   ├── UpstreamUnreachable   refused, reset, DNS failure    -> 502 upstream_unreachable
│   ├── UpstreamBadResponse   a response that is not HTTP    -> 502 upstream_bad_response
│   └── UpstreamTimeout       no headers in upstream_timeout -> 504 upstream_timeout
└── AccountingError    collecting or recording failed; logged, retried, never shown
    ├── FetchError          a steps/messages fetch failed (status, retry_after)
    └── MissingCredential   no key in memory for a job's fingerprint; the job waits
"""

from __future__ import annotations

__all__ = [
    "AccountingError",
    "ConfigError",
    "FetchError",
    "MissingCredential",
    "ProxyError",
    "UpstreamBadResponse",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnreachable",
]


class ProxyError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ProxyError):
    """A setting is invalid. The message names the setting and its (non-secret) value."""


class UpstreamError(ProxyError):
    status: int = 502
    code: str = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    status = 502
    code = "upstream_unreachable"


class UpstreamBadResponse(UpstreamError):
    status = 502
    code = "upstream_bad_response"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class AccountingError(ProxyError):
    """Collecting or recording usage failed. Never reaches a client."""


class FetchError(AccountingError):
    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """401/403/404 will not get better by retrying with the same key; the rest may."""
        return self.status is None or self.status == 429 or self.status >= 500 or self.status == 408


class MissingCredential(AccountingError):
    """No credential for a fingerprint is held in memory (for instance after a restart)."""
