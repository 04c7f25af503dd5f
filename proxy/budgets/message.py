"""What people read: the refusal's message and the alerts' webhook body; pure.

The webhook body is JSON with a human `text` (what Slack and Teams incoming webhooks show)
and the same facts as fields; money is a string of dollars, exact."""

from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal

from proxy.budgets.periods import ADJECTIVES
from proxy.budgets.status import BudgetStatus

__all__ = ["alert_body", "dollars", "refusal_message"]

_CENT = Decimal("0.01")


def dollars(value: Decimal) -> str:
    """$1,234.57: rounded to the cent for people."""
    return f"${value.quantize(_CENT, rounding=ROUND_HALF_UP):,}"


def refusal_message(status: BudgetStatus) -> str:
    rule = status.rule
    return (
        f"{rule.subject_label} has used {dollars(status.spend)} of its "
        f"{dollars(rule.limit_usd)} {ADJECTIVES[rule.period]} budget (budget {rule.id}); "
        f"requests are refused by the usage proxy until the period ends at "
        f"{status.end.isoformat()} or the budget is raised or removed."
    )


def _money(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


def alert_body(status: BudgetStatus, kind: str, threshold: int) -> str:
    """The JSON of a `threshold` alert (`threshold` percent reached) or a `forecast` alert."""
    rule = status.rule
    who, limit = rule.subject_label, dollars(rule.limit_usd)
    period = ADJECTIVES[rule.period]
    if kind == "forecast":
        assert status.reaches_limit_at is not None
        text = (
            f"Budget {rule.id}: at this rate {who} reaches its {limit} {period} budget on "
            f"{status.reaches_limit_at:%b} {status.reaches_limit_at.day} "
            f"({dollars(status.spend)} spent so far, {dollars(status.forecast or Decimal(0))} "
            f"forecast for the period)."
        )
    else:
        text = (
            f"Budget {rule.id}: {who} has used {dollars(status.spend)} of its {limit} {period} "
            f"budget ({threshold}% threshold reached"
            + ("; further requests are refused)." if rule.enforce and threshold >= 100 else ").")
        )
    body = {
        "text": text,
        "kind": kind,
        "budget": rule.id,
        "subject": {"kind": rule.subject_kind, "name": rule.subject, "key_hint": rule.key_hint},
        "period": {
            "kind": rule.period,
            "start": status.start.isoformat(),
            "end": status.end.isoformat(),
        },
        "spend": _money(status.spend),
        "limit": _money(rule.limit_usd),
        "ratio": round(status.ratio, 6),
        "threshold": threshold if kind == "threshold" else None,
        "forecast": _money(status.forecast),
        "forecast_reaches_limit_at": (
            status.reaches_limit_at.isoformat() if status.reaches_limit_at else None
        ),
        "enforce": rule.enforce,
    }
    return json.dumps(body, separators=(",", ":"))
