"""`usage-proxy` on asyncio's own event loop: `serve` falls back to asyncio.run when uvloop
cannot be imported, and this hides it. Same arguments as `usage-proxy`."""

import sys

sys.modules["uvloop"] = None  # type: ignore[assignment]  # import uvloop -> ImportError

from proxy.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
