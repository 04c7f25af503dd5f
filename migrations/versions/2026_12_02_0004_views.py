"""Views that are the public interface for people who query the database directly: `usage`,
`usage_daily` and `usage_monthly_team`, with the same columns and meaning on both backends.
Money is in dollars (`numeric` on PostgreSQL; on SQLite a REAL, and the exact value as a decimal
string), timestamps are UTC (ISO 8601 text on SQLite). Tables stay internal: a later migration
that changes them recreates these views so that saved queries keep working.
Written by hand (views are not part of the models).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:05:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The attribution and counting columns, the same on both backends.
_COLUMNS = """
    id, kind, object_id, team, key_hint, key_fingerprint, project, organization,
    assistant_id, thread_id, conversation_id, model, tag, status,
    prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens,
    usage_source, estimator,
    code_interpreter_calls, code_interpreter_sessions, file_search_calls, web_search_calls,
    function_calls"""

_SQLITE_USAGE = f"""
CREATE VIEW usage AS
SELECT
    replace(occurred_at, ' ', 'T') || 'Z' AS occurred_at,
    replace(recorded_at, ' ', 'T') || 'Z' AS recorded_at,
    substr(occurred_at, 1, 10) AS day,
    substr(occurred_at, 1, 7) AS month,
    {_COLUMNS},
    cost_usd / 1e10 AS cost_usd,
    CASE WHEN cost_usd IS NULL THEN NULL ELSE
        (CASE WHEN cost_usd < 0 THEN '-' ELSE '' END)
        || (abs(cost_usd) / 10000000000) || '.'
        || substr('0000000000' || (abs(cost_usd) % 10000000000), -10)
    END AS cost_usd_exact
FROM usage_records
"""

_POSTGRES_USAGE = f"""
CREATE VIEW usage AS
SELECT
    occurred_at,
    recorded_at,
    (occurred_at AT TIME ZONE 'UTC')::date AS day,
    to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM') AS month,
    {_COLUMNS},
    cost_usd,
    cost_usd::text AS cost_usd_exact
FROM usage_records
"""

# Money summed exactly in the stored unit, then shown in dollars.
_SQLITE_DAILY = """
CREATE VIEW usage_daily AS
SELECT day, team, model, kind,
    count(*) AS events,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(total_tokens) AS total_tokens,
    sum(r.cost_usd) / 1e10 AS cost_usd
FROM (SELECT substr(occurred_at, 1, 10) AS day, * FROM usage_records) AS r
GROUP BY day, team, model, kind
"""

_POSTGRES_DAILY = """
CREATE VIEW usage_daily AS
SELECT day, team, model, kind,
    count(*) AS events,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(total_tokens) AS total_tokens,
    sum(cost_usd) AS cost_usd
FROM usage
GROUP BY day, team, model, kind
"""

_SQLITE_MONTHLY = """
CREATE VIEW usage_monthly_team AS
SELECT month, team,
    count(*) AS events,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(total_tokens) AS total_tokens,
    sum(r.cost_usd) / 1e10 AS cost_usd,
    sum(CASE WHEN r.cost_usd IS NULL THEN 1 ELSE 0 END) AS unpriced_events,
    CASE WHEN sum(r.cost_usd) = 0 THEN 0.0 ELSE
        1.0 * sum(CASE WHEN usage_source <> 'reported' THEN r.cost_usd ELSE 0 END)
        / sum(r.cost_usd)
    END AS estimated_share
FROM (SELECT substr(occurred_at, 1, 7) AS month, * FROM usage_records) AS r
GROUP BY month, team
"""

_POSTGRES_MONTHLY = """
CREATE VIEW usage_monthly_team AS
SELECT month, team,
    count(*) AS events,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(total_tokens) AS total_tokens,
    sum(cost_usd) AS cost_usd,
    count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_events,
    CASE WHEN coalesce(sum(cost_usd), 0) = 0 THEN 0 ELSE
        coalesce(sum(cost_usd) FILTER (WHERE usage_source <> 'reported'), 0) / sum(cost_usd)
    END AS estimated_share
FROM usage
GROUP BY month, team
"""


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in (
        (_SQLITE_USAGE, _SQLITE_DAILY, _SQLITE_MONTHLY)
        if sqlite
        else (_POSTGRES_USAGE, _POSTGRES_DAILY, _POSTGRES_MONTHLY)
    ):
        op.execute(statement)


def downgrade() -> None:
    for view in ("usage_monthly_team", "usage_daily", "usage"):
        op.execute(f"DROP VIEW IF EXISTS {view}")
