"""Alembic migrations of usage-proxy; run them with `usage-proxy migrate` (proxy.db.migrate)."""
