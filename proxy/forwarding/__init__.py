"""The wire: everything that touches the bytes between client and upstream. This package
imports nothing from accounting/, db/, reports/ or http/ (checked by import-linter): the proxy
runs without accounting, and accounting learns what it knows through the observer seam
(exchange.py)."""
