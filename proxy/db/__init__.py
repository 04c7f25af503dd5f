"""Storage: SQLAlchemy 2 models, engines, the jobs outbox, usage records and report queries."""
