"""Alerts of every source (budgets, billing residuals, ...), delivered from the outbox
(proxy.db.alerts) to `alert_webhook_url`, signed. Sources only queue; this package knows none of
them (the import contracts in pyproject.toml hold it to that)."""
