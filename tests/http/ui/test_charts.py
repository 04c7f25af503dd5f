"""The SVG charts: labels escaped, no style attribute or script (the CSP allows neither), bars
in proportion, stacks in order."""

from __future__ import annotations

import re
from decimal import Decimal

from proxy.http.ui.charts import OTHERS, PALETTE, bars, stacked_days


def test_bars_escape_labels_and_scale_to_the_largest():
    svg = str(bars("Spend", [("<script>x</script>", Decimal(10)), ("b&c", Decimal(5))]))
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "b&amp;c" in svg
    assert "style=" not in svg
    widths = [float(w) for w in re.findall(r'<rect x="160" y="[\d.]+" width="([\d.]+)"', svg)]
    assert widths[0] == 2 * widths[1]


def test_stacked_days_put_each_series_in_its_colour_and_others_in_grey():
    days = ["2026-11-01", "2026-11-02"]
    series = {
        "red": {"2026-11-01": Decimal(3)},
        "blue": {"2026-11-01": Decimal(1), "2026-11-02": Decimal(4)},
        "2 others": {"2026-11-02": Decimal(1)},
    }
    svg = str(stacked_days("Daily", days, series))
    assert "style=" not in svg and "<script" not in svg
    assert f'fill="{PALETTE[0]}"><title>red 2026-11-01: $3.00' in svg
    assert f'fill="{PALETTE[1]}"><title>blue 2026-11-02: $4.00' in svg
    assert f'fill="{OTHERS}"><title>2 others 2026-11-02: $1.00' in svg
    # The tallest day (5) reaches the top of the plot: the scale is the largest day's total.
    assert "$5.00" in svg
