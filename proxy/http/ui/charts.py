"""SVG charts drawn in Python: horizontal bars, and a daily chart stacked by series. Pure:
values in, markup out. Every chart is an <svg role="img"> with a <title>, scales to its
container (viewBox, width 100%), and uses presentation attributes only, never a style
attribute or script, so the pages' Content-Security-Policy needs no exception. The pages put
a table with the same numbers beside each chart."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from markupsafe import Markup, escape

__all__ = ["PALETTE", "bars", "colour", "stacked_days"]

# Okabe-Ito, readable by the colour-blind; more series than colours repeat them.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


OTHERS = "#BBBBBB"  # the stack of every series beyond the palette's


def colour(index: int, name: str = "") -> str:
    if name.endswith(" others"):
        return OTHERS
    return PALETTE[index % len(PALETTE)]


def _money(value: Decimal) -> str:
    return f"${value:,.2f}"


def bars(title: str, items: Sequence[tuple[str, Decimal]], *, width: int = 600) -> Markup:
    """One horizontal bar per (label, value), longest first as given."""
    row, label_w = 24, 160
    height = max(row * len(items), row) + 8
    top = max((v for _, v in items), default=Decimal(0)) or Decimal(1)
    out = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    span = width - label_w - 90
    for i, (label, value) in enumerate(items):
        y = 4 + i * row
        w = max(float(value / top) * span, 1.0) if value > 0 else 0
        out.append(
            f'<text x="{label_w - 6}" y="{y + 16}" text-anchor="end" font-size="12" '
            f'fill="#222">{escape(label[:24])}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" '
            f'fill="{PALETTE[0]}"><title>{escape(label)}: {_money(value)}</title></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 16}" font-size="12" '
            f'fill="#222">{_money(value)}</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))


def stacked_days(
    title: str,
    days: Sequence[str],
    series: Mapping[str, Mapping[str, Decimal]],
    *,
    width: int = 720,
    height: int = 220,
) -> Markup:
    """A column per day (YYYY-MM-DD), stacked by series (name -> day -> value), with a
    legend; series in the order given."""
    left, bottom, legend = 56, 20, 18 * ((len(series) + 3) // 4)
    plot_h = height - bottom - 8
    totals = {d: sum((s.get(d, Decimal(0)) for s in series.values()), Decimal(0)) for d in days}
    top = max(totals.values(), default=Decimal(0)) or Decimal(1)
    col = (width - left) / max(len(days), 1)
    out = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height + legend}" width="100%" '
        f'preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left - 4}" y="14" text-anchor="end" font-size="11" fill="#444">'
        f"{_money(top)}</text>",
        f'<line x1="{left}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" '
        'stroke="#888"/>',
    ]
    for i, day in enumerate(days):
        x = left + i * col
        y = float(height - bottom)
        for n, (name, values) in enumerate(series.items()):
            value = values.get(day, Decimal(0))
            if value <= 0:
                continue
            h = float(value / top) * plot_h
            y -= h
            out.append(
                f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(col - 2, 1):.1f}" '
                f'height="{h:.1f}" fill="{colour(n, name)}"><title>{escape(name)} {day}: '
                f"{_money(value)}</title></rect>"
            )
        if len(days) <= 12 or i % 5 == 0:
            out.append(
                f'<text x="{x + col / 2:.1f}" y="{height - 5}" text-anchor="middle" '
                f'font-size="10" fill="#444">{day[8:]}</text>'
            )
    for n, name in enumerate(series):
        lx, ly = 8 + (n % 4) * (width // 4), height + 4 + 18 * (n // 4)
        out.append(
            f'<rect x="{lx}" y="{ly}" width="12" height="12" fill="{colour(n, name)}"/>'
            f'<text x="{lx + 16}" y="{ly + 11}" font-size="11" fill="#222">'
            f"{escape(name[:28])}</text>"
        )
    out.append("</svg>")
    return Markup("".join(out))
