"""What a budget is, and the checks on what people type for one (`budgets set`): the limit,
the period and the warning thresholds; pure."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from proxy.budgets.periods import PERIODS

__all__ = [
    "SUBJECT_KINDS",
    "BudgetRule",
    "SpecError",
    "describe_subject",
    "parse_limit",
    "parse_period",
    "parse_warn",
    "warn_text",
]

SUBJECT_KINDS = ("team", "key", "project")
_MAX_LIMIT = Decimal("1e9")
_MAX_PERCENT = 1000


class SpecError(ValueError):
    """A value of a budget that cannot be: the message is one line for people."""


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """A budget as stored: `subject` is a team, a key fingerprint or a project id."""

    id: int
    subject_kind: str
    subject: str
    key_hint: str | None
    limit_usd: Decimal
    period: str
    warn: tuple[int, ...]
    enforce: bool

    @property
    def subject_label(self) -> str:
        return describe_subject(self.subject_kind, self.subject, self.key_hint)


def describe_subject(kind: str, subject: str, key_hint: str | None = None) -> str:
    """ "team red", "key sk-...abcd", "project proj_1": how messages name a subject."""
    if kind == "key":
        return f"key {key_hint or subject[:12]}"
    return f"{kind} {subject}"


def parse_limit(text: str) -> Decimal:
    try:
        value = Decimal(text.strip().removeprefix("$"))
    except InvalidOperation:
        raise SpecError(f"--limit: {text!r} is not an amount in USD") from None
    if not value.is_finite() or value <= 0:
        raise SpecError(f"--limit: {text!r} must be an amount above 0 USD")
    if value > _MAX_LIMIT:
        raise SpecError(f"--limit: {text!r} is more than {_MAX_LIMIT:f} USD")
    return value


def parse_period(text: str) -> str:
    if text not in PERIODS:
        raise SpecError(f"--period: {text!r} is not one of {', '.join(PERIODS)}")
    return text


def parse_warn(text: str) -> tuple[int, ...]:
    """ "50,80,100" -> (50, 80, 100): whole percentages of the limit, strictly ascending, from 1
    to 1000. An empty text means no warnings."""
    if not text.strip():
        return ()
    out: list[int] = []
    for part in text.split(","):
        part = part.strip().removesuffix("%")
        if not part.isdigit() or not 1 <= int(part) <= _MAX_PERCENT:
            raise SpecError(
                f"--warn: {text!r} must be whole percentages from 1 to {_MAX_PERCENT}, "
                "separated by commas"
            )
        if out and int(part) <= out[-1]:
            raise SpecError(f"--warn: {text!r} must be in ascending order, each once")
        out.append(int(part))
    return tuple(out)


def warn_text(warn: tuple[int, ...]) -> str:
    return ",".join(map(str, warn))
