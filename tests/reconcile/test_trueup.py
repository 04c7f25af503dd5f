from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from proxy.reconcile.trueup import allocate

D = Decimal


def test_shares_follow_recorded_cost():
    assert allocate({"a": D("3"), "b": D("1")}, D("1"), "x") == {"a": D("0.75"), "b": D("0.25")}
    assert allocate({"a": D("3"), "b": D("1")}, D("-1"), "x") == {"a": D("-0.75"), "b": D("-0.25")}


def test_nothing_recorded_goes_to_the_fallback():
    assert allocate({}, D("1.25"), "ghosts") == {"ghosts": D("1.25")}
    assert allocate({"a": D(0)}, D("0"), "x") == {}


def test_indivisible_units_go_by_largest_remainder():
    shares = allocate({"a": D(1), "b": D(1), "c": D(1)}, D("2e-10"), "x")
    assert sorted(shares.values()) == [D("1e-10"), D("1e-10")]


amounts = st.decimals(min_value=0, max_value=1000, places=10, allow_nan=False)


@given(
    st.dictionaries(st.sampled_from("abcdef"), amounts, max_size=6),
    st.decimals(min_value=-1000, max_value=1000, places=10, allow_nan=False),
)
def test_shares_add_up_to_the_residual_exactly(recorded, residual):
    shares = allocate(recorded, residual, "fallback")
    assert sum(shares.values(), D(0)) == residual
