"""Egress: which proxy an outgoing connection goes through, and which roots its TLS trusts.
One answer for every connection the proxy makes: the upstream (forwarded requests and the
collector's fetches, which share its pool) and the billing API.

The proxy for a URL is `upstream_proxy` when set, else the environment's, as aiohttp's
`trust_env` reads it (HTTPS_PROXY for an https URL, HTTP_PROXY for an http one, lower case
first); NO_PROXY exempts a host from either, as curl also applies it to an explicit proxy.
It is resolved once, when a pool is made: each pool goes to one origin. Only http and https
proxies can be used (aiohttp has no SOCKS); any other is refused at start-up rather than
skipped, which would send the traffic past the proxy the operator asked for.

A proxy URL's user:password@ is what aiohttp sends as Proxy-Authorization. It is shown only
through `redact` (user:***@), and never goes into an error message.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import ssl
import urllib.request

import aiohttp
from yarl import URL

from proxy.config_values import check_proxy_url, load_ca_file
from proxy.redact import redact

__all__ = ["Egress", "Route"]


@dataclasses.dataclass(frozen=True)
class Route:
    """The proxy a URL goes through, and where that proxy was named."""

    proxy: URL = dataclasses.field(repr=False)  # may hold user:password
    source: str  # "upstream_proxy", or the environment variable

    @property
    def shown(self) -> str:
        """The proxy URL with its password masked: for logs and /_proxy/health."""
        return redact(str(self.proxy))


@dataclasses.dataclass(frozen=True)
class Egress:
    """`proxy`: the explicit proxy URL ("": the environment's). `ca_file`: a PEM file of roots
    trusted beside the system's ("": the system's only). Both were checked by Settings."""

    proxy: str = dataclasses.field(default="", repr=False)
    ca_file: str = ""

    def route(self, url: URL) -> Route | None:
        """The proxy `url` goes through, or None: direct. Reads the environment."""
        proxies = urllib.request.getproxies_environment()
        if url.host and urllib.request.proxy_bypass_environment(url.host, proxies):
            return None
        if self.proxy:
            return Route(URL(check_proxy_url(self.proxy, "upstream_proxy")), "upstream_proxy")
        value = proxies.get(url.scheme)
        if not value:
            return None
        # The variable it came from, as urllib picks it: lower case first.
        lower = f"{url.scheme}_proxy"
        source = lower if os.environ.get(lower) else lower.upper()
        return Route(URL(check_proxy_url(value, source)), source)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying context that also trusts `ca_file`, or None for the defaults."""
        return _context(self.ca_file) if self.ca_file else None

    def session_options(self, url: URL) -> dict[str, object]:
        """ClientSession arguments for a session whose requests all go to `url`'s origin: its
        proxy (aiohttp takes the credentials from the URL) and a connector with the roots."""
        route = self.route(url)
        options: dict[str, object] = {}
        if route is not None:
            options["proxy"] = route.proxy
        context = self.ssl_context()
        if context is not None:
            options["connector"] = aiohttp.TCPConnector(ssl=context)
        return options


@functools.cache
def _context(ca_file: str) -> ssl.SSLContext:
    # As aiohttp's connector makes its own (system roots, HTTP/1.1 by ALPN), plus the file's.
    context = ssl.create_default_context()
    context.set_alpn_protocols(("http/1.1",))
    load_ca_file(ca_file, context)
    return context
