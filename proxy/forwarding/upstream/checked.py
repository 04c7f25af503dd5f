"""The protocol of every upstream connection, in both pools (lean.py's and aiohttp's, in
session.py): aiohttp's ResponseHandler, which may go back to its pool only when the exchange on
it ended cleanly. The internals it relies on are checked by compat.py; without them the lean
client is not used and aiohttp's pool reuses no connection.

Fail closed, because a connection out of step with its upstream hands one client another's
response (issue 20, findings 7 and 9). A connection is closed instead of reused when:

- the upstream's answer came while the request body was still being written (bytes still in
  the transport's buffer, or in the socket's send queue, not yet acknowledged): the upstream
  may not read the body, and would then read its rest as the next request. A streamed body
  the forwarder had not finished is its own case: it closes the response. An upstream that
  acknowledged every byte and still did not read them cannot be told from one that did;
- the read that ended the response held bytes beyond it (after Content-Length, or after the
  last chunk), or bytes came while no response was expected.

aiohttp's parser keeps no count of the bytes a response took on the wire, so this counts them:
the end of the final (non-1xx) head is found in the bytes as they come, and at the end of the
body the bytes read must be exactly that head and the body (Content-Length), or end with the
CRLF CRLF that ends a chunked body and its trailers.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
from typing import Any

from proxy.forwarding.upstream.compat import ResponseHandler

__all__ = ["CheckedConnection"]

if sys.platform == "linux":
    import fcntl
    import termios

    def _unsent(fd: int) -> int:
        """Bytes of the socket's send queue the peer has not acknowledged (SIOCOUTQ)."""
        return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
else:  # pragma: no cover - elsewhere only the transport's own buffer is looked at

    def _unsent(fd: int) -> int:
        return 0


_HEAD_END = b"\r\n\r\n"
_MAX_SCAN = 1 << 20  # a head that has not ended by here is refused by the parser anyway


# An aiohttp without the class leaves this unusable, and compat.check() says so.
_Base: Any = ResponseHandler if ResponseHandler is not None else object


class CheckedConnection(_Base):
    """A ResponseHandler whose `should_close` is also true after an exchange that did not end
    cleanly (see the module's docstring). `set_response_params` starts an exchange."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._expecting = False  # between set_response_params and the response's end
        self._dirty = False
        self._rx = 0  # bytes read in this exchange
        self._scan = bytearray()  # bytes read that may still hold the final head's end
        self._scanned = 0  # offset of _scan's first byte in the exchange
        self._body_start = -1  # offset where the final response's body begins
        self._last4 = b""
        self._fd = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._fd = sock.fileno()

    @property
    def should_close(self) -> bool:
        return self._dirty or super().should_close

    def set_response_params(self, **kwargs: Any) -> None:
        super().set_response_params(**kwargs)
        self._expecting = True
        self._rx = 0
        self._scan.clear()
        self._scanned = 0
        self._body_start = -1
        self._last4 = b""

    def data_received(self, data: bytes) -> None:
        if not self._expecting and data:
            # Bytes nobody asked for: whatever they are, the connection is out of step.
            self._dirty = True
            if self.transport is not None:
                self.transport.close()
            return
        if data:
            self._rx += len(data)
            self._last4 = (self._last4 + data[-4:])[-4:]
            if self._body_start < 0:
                self._find_head(data)
        super().data_received(data)
        payload = self._payload
        if self._body_start >= 0 and payload is not None and payload.is_eof():
            self._expecting = False
            if self._rx != self._body_start + payload.total_bytes and self._last4 != _HEAD_END:
                self._dirty = True  # bytes beyond the response

    def _find_head(self, data: bytes) -> None:
        scan = self._scan
        scan += data
        while (end := scan.find(_HEAD_END)) >= 0:
            interim = scan[9:10] == b"1" and scan[:5] == b"HTTP/"
            self._scanned += end + 4
            del scan[: end + 4]
            if not interim:
                self._body_start = self._scanned
                scan.clear()
                if self._request_pending():
                    # The answer came before the upstream had taken the whole request.
                    self._dirty = True
                return
        if len(scan) > _MAX_SCAN:
            scan.clear()

    def _request_pending(self) -> bool:
        """Whether bytes of the request are still in the transport's buffer or in the socket's
        send queue, unacknowledged: the upstream has not received them."""
        transport = self.transport
        if transport is None:
            return False
        if transport.get_write_buffer_size() > 0:
            return True
        if self._fd < 0:
            return False
        with contextlib.suppress(OSError):
            return _unsent(self._fd) > 0
        return True  # cannot tell: fail closed
