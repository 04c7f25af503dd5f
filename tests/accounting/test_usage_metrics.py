"""The metrics' subscription to UsageRecorded."""

from __future__ import annotations

from decimal import Decimal

from proxy.accounting.usage import UsageRecorded, UsageTotal
from proxy.accounting.usage_metrics import UsageMetrics
from proxy.metrics import Metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_runs_count_by_source_events_by_kind_and_usage_by_team_and_model():
    metrics = Metrics()
    UsageMetrics(metrics)(
        UsageRecorded(
            (
                UsageTotal("assistants.run", "estimated", "red", "gpt-4o", 3, 30, 6, Decimal("1")),
                UsageTotal("assistants.run", "reported", "red", "gpt-4o", 2, 20, 4, Decimal("2")),
                UsageTotal("chat.completion", "api", "red", "gpt-4o", 5, 50, 10, Decimal("0.5")),
            )
        )
    )
    assert sample(metrics, "usage_proxy_runs_recorded_total", source="estimated") == 3
    assert sample(metrics, "usage_proxy_runs_recorded_total", source="reported") == 2
    assert sample(metrics, "usage_proxy_events_recorded_total", kind="chat.completion") == 5
    assert sample(metrics, "usage_proxy_events_recorded_total", kind="assistants.run") == 0
    labels = {"team": "red", "model": "gpt-4o"}
    assert sample(metrics, "usage_proxy_tokens_total", type="prompt", **labels) == 100
    assert sample(metrics, "usage_proxy_tokens_total", type="completion", **labels) == 20
    assert sample(metrics, "usage_proxy_cost_usd_total", **labels) == 3.5
