"""Delivery of the alert outbox (proxy.db.alerts), whatever source queued them, to
`alert_webhook_url`: claims due alerts under a lease (so one replica sends each), posts each
signed (signing.py), marks it sent on a 2xx, and otherwise retries it with doubling backoff from
`alert_retry_base` up to an hour; every failure is logged (status or error type, never the
secret) and counted (usage_proxy_alert_webhook_failures).

An alert is sent at least once: a replica that dies between the receiver's 2xx and marking the
row sent leaves it to be sent again when its lease runs out. Traffic never waits on any of it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from yarl import URL

from proxy.alerts.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from proxy.db import alerts as db_alerts
from proxy.db.errors import DB_ERRORS
from proxy.forwarding.upstream.egress import Egress
from proxy.metrics import Metrics
from proxy.settings import Settings

__all__ = ["AlertSender"]

_log = logging.getLogger("proxy.alerts")
_MAX_BACKOFF = 3600.0
_POST_TIMEOUT = 10.0
_LEASE = 60.0  # longer than a post may take


class AlertSender:
    def __init__(
        self,
        sessionmaker: Callable[[], async_sessionmaker[AsyncSession]],
        metrics: Metrics,
        *,
        url: str,
        secret: str,
        retry_base: float,
        poll_interval: float = 1.0,
        egress: Egress | None = None,
    ) -> None:
        self._sm = sessionmaker
        self._metrics = metrics
        self._url = url
        self._secret = secret
        self._retry_base = retry_base
        self._poll = poll_interval
        self._worker = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._egress = egress or Egress()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        sessionmaker: Callable[[], async_sessionmaker[AsyncSession]],
        metrics: Metrics,
    ) -> AlertSender | None:
        """The sender `settings` ask for; None without `alert_webhook_url` (alerts then stay
        in the outbox)."""
        if not settings.alert_webhook_url:
            return None
        if not settings.alert_webhook_secret:
            _log.warning("alert_webhook_url is set without alert_webhook_secret: unsigned")
        return cls(
            sessionmaker,
            metrics,
            url=settings.alert_webhook_url,
            secret=settings.alert_webhook_secret,
            retry_base=settings.alert_retry_base,
            # Budget alerts are the ones people wait for: polled as often as budgets refresh.
            poll_interval=min(1.0, settings.budget_refresh_interval * 2),
            egress=Egress(settings.upstream_proxy, settings.upstream_ca_file),
        )

    async def context(self, app: Any) -> AsyncIterator[None]:
        """cleanup_ctx, after the accounting's (the database is open): sends while the app runs."""
        self._task = asyncio.create_task(self.run(), name="alert-sender")
        try:
            yield
        finally:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def wake(self) -> None:
        """New alerts are in the outbox."""
        self._wake.set()

    async def run(self) -> None:
        """Send due alerts until cancelled: when woken, and every poll interval (retries that
        came due, and alerts other replicas queued)."""
        timeout = aiohttp.ClientTimeout(total=_POST_TIMEOUT)
        # Through the egress proxy and with the CA roots the upstream's traffic uses.
        options = self._egress.session_options(URL(self._url))
        async with aiohttp.ClientSession(timeout=timeout, **options) as self._session:  # type: ignore[arg-type]
            while True:
                self._wake.clear()
                try:
                    await self.send_due()
                except Exception:
                    # A bug, not the receiver: the alerts stay in the outbox for the next round.
                    _log.exception("sending alerts failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)

    async def send_due(self) -> int:
        """Claim and post what is due now; how many were delivered."""
        try:
            claimed = await db_alerts.claim(self._sm(), worker=self._worker, lease=_LEASE)
        except DB_ERRORS as exc:
            _log.warning("cannot claim alerts: %s", type(exc).__name__)
            return 0
        delivered = 0
        for alert in claimed:
            error = await self._post(alert.payload.encode())
            try:
                if error is None:
                    await db_alerts.sent(self._sm(), alert.id, self._worker)
                    delivered += 1
                    self._metrics.alerts_sent.inc()
                    continue
                self._metrics.alert_webhook_failures.inc()
                delay = min(self._retry_base * 2**alert.attempts, _MAX_BACKOFF)
                _log.warning(
                    "alert %d not delivered (attempt %d): %s; retrying in %.1f s",
                    alert.id,
                    alert.attempts + 1,
                    error,
                    delay,
                )
                await db_alerts.failed(self._sm(), alert.id, self._worker, error=error, delay=delay)
            except DB_ERRORS as exc:
                # Its lease runs out and it is claimed again: sent twice at worst.
                _log.warning("cannot update alert %d: %s", alert.id, type(exc).__name__)
        return delivered

    async def _post(self, body: bytes) -> str | None:
        """None if the receiver took it (2xx), else why not, for the log."""
        assert self._session is not None
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp)}
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, timestamp, body)
        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return type(exc).__name__
