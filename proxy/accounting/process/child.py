"""The collector process: forked by `serve` before its event loop starts, so that it shares the
modules already imported, or, when it must be started again, `python -m
proxy.accounting.process.child FD`. Started by the serving process
(proxy.accounting.process.supervisor), never by hand.

It runs a RunCollector on its own event loop, at a lower CPU priority than the serving process,
so a burst of finished runs is fetched, estimated and recorded without holding up forwarding.
Everything it needs comes over the socket FD (proxy.accounting.process.wire): the settings
first, then the keys it may fetch with, then wake-ups. What it recorded (UsageRecorded) and
its failures go back the same way.

It stops, giving back the jobs it holds, when the socket closes (the serving process stopped,
or died: the kernel closes its end) or on SIGTERM; SIGINT is left to the serving process, which
closes the socket when it shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys

from proxy.accounting.estimate.constants import table_from_settings
from proxy.accounting.pricing import load_price_table
from proxy.accounting.process import wire
from proxy.accounting.sources.assistants.collector import RunCollector
from proxy.accounting.sources.assistants.fetch import RunFetcher
from proxy.accounting.usage import UsageRecorded
from proxy.db.engine import make_engine, make_sessionmaker
from proxy.forwarding.exchange import Dispatcher
from proxy.forwarding.forward import Forwarder
from proxy.forwarding.upstream.egress import Egress
from proxy.gc_settings import collect_less
from proxy.keys import CredentialStore
from proxy.logs import configure_logging

__all__ = ["NICENESS", "Relay", "main", "run"]

# Well below the serving process: the scheduler runs a forwarding wake-up before collector work.
# Not starved for it: the serving process is one thread, so with two cores or more the collector
# has most of one, and only on a saturated machine does it fall back to a few per cent (its
# jobs wait in the database meanwhile). bench/README.md has the measurements behind 15.
NICENESS = 15
# Lines longer than this are refused (the settings line is the longest, a few KiB).
_LINE_LIMIT = 1 << 20


class Relay:
    """What the collector tells the serving process, sent as it happens: usage recorded
    (proxy.accounting.usage.UsageRecorded) and collection failures."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def _send(self, line: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(line)

    def recorded(self, event: UsageRecorded) -> None:
        self._send(wire.recorded_line(event))

    def failed(self, reason: str, n: int) -> None:
        self._send(wire.failed_line(reason, n))


async def _run(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_LINE_LIMIT)
    first = await reader.readline()
    if not first:
        return  # the serving process went before it said anything
    kind, settings = wire.decode(first)
    if kind != "settings":
        raise wire.WireError("the first message must be the settings")
    configure_logging(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    credentials = CredentialStore(settings.credential_ttl, limit=settings.credential_limit)
    engine = make_engine(settings.database_url)
    sm = make_sessionmaker(engine)
    # The same upstream pool settings as forwarding, with no observers.
    upstream = Forwarder(
        settings.upstream,
        Dispatcher([]),
        timeout=settings.upstream_timeout,
        connect_timeout=settings.upstream_connect_timeout,
        limit=settings.upstream_limit,
        egress=Egress(settings.upstream_proxy, settings.upstream_ca_file),
        lean=False,
    )
    await upstream.start()
    relay = Relay(writer)
    collector = RunCollector.from_settings(
        settings,
        lambda: sm,
        RunFetcher(
            lambda: upstream.session,
            upstream.upstream_url,
            timeout=settings.collector_fetch_timeout,
        ),
        credentials,
        load_price_table(settings.pricing_file or None),
        table_from_settings(settings),
        relay.recorded,
        relay.failed,
    )
    collector.start()
    writer.write(wire.READY)
    listening = asyncio.ensure_future(_listen(reader, credentials, collector))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({listening, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (listening, stopping):
            task.cancel()
        await collector.stop()
        await upstream.close()
        await engine.dispose()
        writer.close()


async def _listen(
    reader: asyncio.StreamReader, credentials: CredentialStore, collector: RunCollector
) -> None:
    """Until the serving process closes the socket."""
    async for kind, payload in wire.messages(reader, "serving process"):
        if kind == "key":
            fp, headers = payload
            if credentials.put(fp, headers):
                collector.wake()  # jobs waiting for this key can be collected now
        elif kind == "wake":
            collector.wake()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        sys.exit("usage: python -m proxy.accounting.process.child FD (started by serve)")
    run(int(args[0]))


def run(fd: int) -> None:
    """Collect until the socket `fd` closes: in a process of its own, spawned (main) or forked
    (proxy.accounting.process.supervisor.fork_collector)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    collect_less()  # inherited when forked; set again when spawned
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    try:
        import uvloop
    except ImportError:  # optional speed-up
        uvloop = None
    (uvloop.run if uvloop is not None else asyncio.run)(_run(fd))


if __name__ == "__main__":
    main()
