"""The results table: each figure as direct, proxy and bare, the proxy/bare ratio, the target and
whether it is met. Figures measured in rounds are the median over rounds (ratios: the median of
each round's ratio); `rounds` shows the proxy's lowest and highest round, so that noise shows."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Row", "build_rows", "markdown", "text"]

_COLUMNS = ("figure", "direct", "proxy", "bare", "ratio", "target", "pass", "rounds")
Series = list[float]


@dataclass
class Row:
    figure: str
    direct: float | None = None
    proxy: float | None = None
    bare: float | None = None
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None
    rounds: str = ""
    fmt: str = "{:.2f}"

    def cells(self) -> list[str]:
        def f(v: float | None) -> str:
            return "—" if v is None else self.fmt.format(v)

        ok = "" if self.ok is None else ("PASS" if self.ok else "FAIL")
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}x"
        cells = [f(self.direct), f(self.proxy), f(self.bare), ratio, self.target, ok, self.rounds]
        return [self.figure, *cells]

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "fmt"}


def _med(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _row(
    figure: str,
    direct: Series,
    proxy: Series,
    bare: Series,
    fmt: str,
    *,
    ratios: Series | None = None,
    target: str = "",
    test: Callable[[float], bool] | None = None,
    on_ratio: bool = False,
) -> Row:
    """A row from per-round series; `test` judges the proxy's median (or the ratio's)."""
    ratio = _med(ratios) if ratios else None
    judged = ratio if on_ratio else _med(proxy)
    spread = ""
    if len(proxy) > 1:
        spread = f"{fmt.format(min(proxy))}..{fmt.format(max(proxy))}"
    return Row(
        figure,
        _med(direct),
        _med(proxy),
        _med(bare),
        ratio,
        target,
        test(judged) if test is not None and judged is not None else None,
        spread,
        fmt,
    )


def _rounds(res: dict[str, Any], kind: str, who: str, fn: Callable[..., float]) -> Series:
    """fn(who's round, direct's round, bare's round) for each round; bare-asyncio is the floor
    of the asyncio-loop targets."""
    rounds = res[kind]
    if who not in rounds:
        return []
    bare = rounds.get("bare-asyncio" if who.endswith("-asyncio") else "bare", rounds[who])
    return [fn(t, d, b) for t, d, b in zip(rounds[who], rounds["direct"], bare, strict=True)]


def _small_rows(res: dict[str, Any], proxy: str, bare: str, tag: str) -> list[Row]:
    def get(key: str, who: str) -> Series:
        return _rounds(res, "small", who, lambda t, d, b: t[key])

    def added(key: str, who: str) -> Series:
        return _rounds(res, "small", who, lambda t, d, b: t[key] - d[key])

    def ratio(key: str) -> Series:
        return _rounds(res, "small", proxy, lambda t, d, b: t[key] / b[key] if b[key] else 0.0)

    def both(fn: Callable[[str, str], Series], key: str) -> tuple[Series, Series, Series]:
        return fn(key, "direct") if fn is get else [], fn(key, proxy), fn(key, bare)

    rows = []
    if not tag:
        rows.append(_row("chat latency p50, 1 conn (ms)", *both(get, "p50_ms"), "{:.3f}"))
    for key, limit in (("p50_ms", 0.3), ("p99_ms", 1.0)):
        _, p, b = both(added, key)
        mp, mb = _med(p), _med(b)
        r = [mp / mb] if mp is not None and mb and mb > 0 else None  # differences: no per round
        rows.append(
            _row(
                f"{tag}added latency {key[:3]} (ms)",
                [],
                p,
                b,
                "{:.3f}",
                ratios=r,
                target=f"< {limit:g} ms",
                test=lambda v, lim=limit: v < lim,
            )
        )
    rows.append(
        _row(
            f"{tag}throughput, 32 conns, sustained (req/s)",
            *both(get, "rps"),
            "{:.0f}",
            ratios=ratio("rps"),
            target=">= 0.9x bare",
            test=lambda v: v >= 0.9,
            on_ratio=True,
        )
    )
    if not tag:
        rows.append(
            _row(
                "throughput in the wrk window (req/s)",
                *both(get, "window_rps"),
                "{:.0f}",
                ratios=ratio("window_rps"),
            )
        )
        rows.append(
            _row(
                "accounting drain after the wrk window (s)",
                [],
                get("drain_s", proxy),
                get("drain_s", bare),
                "{:.1f}",
            )
        )
    rows.append(
        _row(
            f"{tag}CPU s per 1000 req, 32 conns",
            [],
            get("cpu_per_1000", proxy),
            get("cpu_per_1000", bare),
            "{:.3f}",
            ratios=ratio("cpu_per_1000"),
            target="<= 1.2x bare",
            test=lambda v: v <= 1.2,
            on_ratio=True,
        )
    )
    if not tag:
        rows.append(
            _row(
                "CPU s per 1000 req, 1 conn",
                [],
                get("cpu_per_1000_serial", proxy),
                get("cpu_per_1000_serial", bare),
                "{:.3f}",
                ratios=ratio("cpu_per_1000_serial"),
            )
        )
    return rows


def _sse_rows(res: dict[str, Any]) -> list[Row]:
    def get(key: str, who: str) -> Series:
        return _rounds(res, "sse", who, lambda t, d, b: t[key])

    def extra(key: str, who: str) -> Series:
        return _rounds(res, "sse", who, lambda t, d, b: t[key] - d[key])

    return [
        _row(
            "SSE delay per event p50 (ms)",
            get("p50_ms", "direct"),
            get("p50_ms", "proxy"),
            get("p50_ms", "bare"),
            "{:.3f}",
        ),
        _row(
            "SSE extra delay p50 (ms)",
            [],
            extra("p50_ms", "proxy"),
            extra("p50_ms", "bare"),
            "{:.3f}",
            target="< 0.5 ms",
            test=lambda v: v < 0.5,
        ),
        _row(
            "SSE extra delay p99 (ms)",
            [],
            extra("p99_ms", "proxy"),
            extra("p99_ms", "bare"),
            "{:.3f}",
        ),
    ]


def _memory_rows(res: dict[str, Any], mib: int) -> list[Row]:
    mem = res["memory"]

    def get(who: str, *path: str) -> Series:
        node: Any = mem.get(who, {})
        for key in path:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        return [node] if isinstance(node, int | float) else []

    rows = [
        _row(
            "idle RSS after start (MiB)",
            [],
            get("proxy", "idle_fresh_mib"),
            get("bare", "idle_fresh_mib"),
            "{:.1f}",
        ),
        _row(
            "idle RSS of its collector process (MiB)",
            [],
            get("proxy", "idle_children_mib"),
            get("bare", "idle_children_mib"),
            "{:.1f}",
        ),
        _row(
            "idle PSS, both processes, shared pages once (MiB)",
            [],
            get("proxy", "idle_pss_mib"),
            get("bare", "idle_pss_mib"),
            "{:.1f}",
        ),
    ]
    for way in ("download", "upload"):
        rows.append(
            _row(
                f"peak RSS growth, {mib} MiB {way} (MiB)",
                [],
                get("proxy", way, "growth_mib"),
                get("bare", way, "growth_mib"),
                "{:.1f}",
                target="< 16 MiB",
                test=lambda v: v < 16,
            )
        )
    for way in ("download", "upload"):
        rows.append(
            _row(
                f"{mib} MiB {way} (MB/s)",
                *(get(w, way, "mb_s") for w in ("direct", "proxy", "bare")),
                "{:.0f}",
            )
        )
    return rows


def _uvloop_rows(res: dict[str, Any]) -> list[Row]:
    small = res["small"]
    if "proxy-asyncio" not in small or "bare-asyncio" not in small:
        return []
    rows = [r for r in _small_rows(res, "proxy-asyncio", "bare-asyncio", "[asyncio loop] ")]
    for row in rows:
        row.target = f"({row.target})" if row.target else ""
        row.ok = None  # informative: the real `serve` runs on uvloop

    def gain(fast: str, slow: str) -> Series:
        return [a["rps"] / b["rps"] for a, b in zip(small[fast], small[slow], strict=True)]

    rows.append(
        _row(
            "uvloop/asyncio sustained throughput",
            [],
            gain("proxy", "proxy-asyncio"),
            gain("bare", "bare-asyncio"),
            "{:.2f}",
        )
    )
    return rows


def _burst_rows(bursts: list[dict[str, Any]], setting: str, key: str, limit: float) -> list[Row]:
    """The rise of the probe's `key` latency from quiet to recording, over the bursts: the
    proxied rise, and (with the direct probe) the rise the proxy adds to the direct one, whose
    median is judged; under rounds, the range over the bursts."""
    rises, direct, added = [], [], []
    for b in bursts:
        quiet, busy = b["quiet"][key], b["recording"][key]
        if quiet is None or busy is None:
            continue
        rises.append(busy - quiet)
        dq = b.get("direct", {}).get("quiet", {}).get(key)
        db = b.get("direct", {}).get("recording", {}).get(key)
        if dq is not None and db is not None:
            direct.append(db - dq)
            added.append((busy - quiet) - (db - dq))
    if not rises:
        return []
    name = f"burst {bursts[0]['runs']} runs, {setting}: {key[:3]}"
    have_direct = len(direct) == len(rises)
    rows = [
        _row(
            f"{name} rise (ms)",
            direct if have_direct else [],
            rises,
            [],
            "{:.3f}",
            target="" if have_direct else f"< {limit:g} ms",
            test=None if have_direct else (lambda v: v < limit),
        )
    ]
    if len(bursts) == 1:
        b = bursts[0]
        rows[0].rounds = f"{b['quiet'][key]:.3f}->{b['recording'][key]:.3f}"
    if have_direct:
        # The fake upstream shares the 2 cores and serves the collector's fetches: its own
        # slowdown is not the proxy's, so the judged rise is what the proxy adds to it, direct
        # and proxied probes interleaved in the same window.
        rows.append(
            _row(
                f"{name} rise added by the proxy (ms)",
                [],
                added,
                [],
                "{:.3f}",
                target=f"< {limit:g} ms",
                test=lambda v: v < limit,
            )
        )
        if len(bursts) == 1:
            d = bursts[0]["direct"]
            rows[1].rounds = f"direct {d['quiet'][key]:.3f}->{d['recording'][key]:.3f}"
    return rows


def _accounting_rows(res: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for setting, acc in res["accounting"].items():
        thr = acc["throughput"]
        for stage in ("observed", "collected"):
            rows.append(
                _row(f"runs {stage}/s, {setting}", [], [thr[f"{stage}_per_s"]], [], "{:.0f}")
            )
        rows.append(
            _row(
                f"runs recorded/s, SQLite, {setting}",
                [],
                [thr["recorded_per_s"]],
                [],
                "{:.0f}",
                target=">= 500/s",
                test=lambda v: v >= 500,
            )
        )
        bursts = acc.get("bursts") or [acc["burst"]]  # one, in results before 2026-11-28
        for key, limit in (("p50_ms", 0.3), ("p99_ms", 1.0)):
            rows.extend(_burst_rows(bursts, setting, key, limit))
        if "chat" in acc:
            chat = acc["chat"]
            note = "" if chat["rows"] else "(no chat rows)"
            rows.append(
                _row(
                    f"chat completion rows/s, {setting}",
                    [],
                    [chat["rows_per_s"]],
                    [],
                    "{:.0f}",
                    target=note,
                )
            )
    est = res.get("estimator")
    if est:
        rows.append(
            _row(
                "estimator tokens/s (large run, 1 thread)",
                [],
                [est["large_run"]["tokens_per_s"]],
                [],
                "{:.0f}",
            )
        )
        rows.append(
            _row(
                "estimator runs/s (bench run, 1 thread)",
                [],
                [est["small_run"]["runs_per_s"]],
                [],
                "{:.0f}",
            )
        )
    return rows


def build_rows(res: dict[str, Any]) -> list[Row]:
    rows = _small_rows(res, "proxy", "bare", "")
    rows += _sse_rows(res)
    rows += _memory_rows(res, res["config"]["mib"])
    rows += _uvloop_rows(res)
    rows += _accounting_rows(res)
    return rows


def text(rows: Sequence[Row]) -> str:
    table = [list(_COLUMNS), *(r.cells() for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [line(cells) for cells in table]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown(rows: Sequence[Row]) -> str:
    out = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    out += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(out)
