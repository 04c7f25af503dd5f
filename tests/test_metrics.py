"""Metrics (proxy.metrics): forwarded requests and upstream latency, counted as plain numbers
and exposed in Prometheus' text format exactly as prometheus_client's own Counter and
Histogram would expose them."""

from __future__ import annotations

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
