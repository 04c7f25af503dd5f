"""Metrics (proxy.metrics): forwarded requests and upstream latency, counted as plain numbers
and exposed in Prometheus' text format exactly as prometheus_client's own Counter and
Histogram would expose them; and the cap on the team and model labels."""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.metrics import _LATENCY_BUCKETS, Metrics


def _lines(text: bytes, prefix: str) -> list[str]:
    # Without the `_created` samples (when a series began), which these two no longer carry.
    return [
        ln for ln in text.decode().splitlines() if ln.startswith(prefix) and "_created" not in ln
    ]


def test_requests_and_latency_read_as_prometheus_client_would_write_them() -> None:
    ours = Metrics()
    registry = CollectorRegistry()
    theirs_requests = Counter("usage_proxy_requests", "r", ["method", "status"], registry=registry)
    theirs_latency = Histogram(
        "usage_proxy_upstream_latency_seconds", "l", buckets=_LATENCY_BUCKETS, registry=registry
    )
    seen = [("GET", 200, 0.003), ("GET", 200, 0.005), ("POST", 500, 299.9), ("POST", 0, None)]
    seen += [("DELETE", 404, 1.0), ("GET", 200, 1e6)]
    for method, status, latency in seen:
        ours.request(method, status, latency)
        theirs_requests.labels(method=method, status=str(status)).inc()
        if latency is not None:
            theirs_latency.observe(latency)
    ours_text, theirs_text = ours.render(), generate_latest(registry)
    for prefix in ("usage_proxy_requests_total{", "usage_proxy_upstream_latency_seconds_"):
        assert sorted(_lines(ours_text, prefix)) == sorted(_lines(theirs_text, prefix))
    assert (
        ours.registry.get_sample_value(
            "usage_proxy_requests_total", {"method": "GET", "status": "200"}
        )
        == 3
    )


def test_made_up_methods_are_one_label() -> None:
    metrics = Metrics()
    for i in range(1000):
        metrics.request(f"BREW{i}", 418)
    text = metrics.render()
    assert _lines(text, "usage_proxy_requests_total{") == [
        'usage_proxy_requests_total{method="OTHER",status="418"} 1000.0'
    ]


def _label_values(metrics: Metrics, sample: str, label: str) -> set[str]:
    return {
        s.labels[label] for m in metrics.registry.collect() for s in m.samples if s.name == sample
    }


def test_teams_and_models_beyond_the_first_200_are_counted_as_other() -> None:
    # Team and model names come from clients and the upstream: each new one must not be a new
    # series forever.
    metrics = Metrics()
    for i in range(250):
        metrics.usage(f"team-{i}", f"model-{i}", 10, 1, Decimal("0.5"))
    metrics.usage("team-0", "model-0", 5, 2, Decimal("0.25"))  # seen before the cap: its own
    metrics.api_error("team-1", 429)
    metrics.api_error("team-new", 429)

    first = {f"team-{i}" for i in range(200)}
    assert _label_values(metrics, "usage_proxy_tokens_total", "team") == first | {"other"}
    assert _label_values(metrics, "usage_proxy_tokens_total", "model") == {
        f"model-{i}" for i in range(200)
    } | {"other"}
    assert _label_values(metrics, "usage_proxy_cost_usd_total", "team") == first | {"other"}
    assert _label_values(metrics, "usage_proxy_upstream_errors_total", "team") == {
        "team-1",
        "other",
    }

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    tokens = "usage_proxy_tokens_total"
    assert value(tokens, team="other", model="other", type="prompt") == 50 * 10
    assert value(tokens, team="other", model="other", type="completion") == 50 * 1
    assert value("usage_proxy_cost_usd_total", team="other", model="other") == 50 * 0.5
    assert value(tokens, team="team-0", model="model-0", type="prompt") == 15
    assert value("usage_proxy_cost_usd_total", team="team-0", model="model-0") == 0.75
    assert value("usage_proxy_upstream_errors_total", team="other", status="429") == 1
