"""Whole tables of constants from observations: one fit per model family, and the
leave-one-out check that shows overfitting. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from proxy.accounting.estimate.constants import ConstantsTable
from proxy.accounting.estimate.runs import RunBasis
from proxy.calibration.compare import Compared, compare
from proxy.calibration.fit import fit_constants
from proxy.calibration.observations import Observation
from proxy.calibration.recorded import RecordedRun

__all__ = ["fit_table", "leave_one_out"]


def fit_table(obs: Sequence[Observation], table: ConstantsTable) -> ConstantsTable:
    """``table`` with each observed family's constants refitted."""
    families = dict(table.families)
    for family in sorted({o.family for o in obs}):
        prior = table.for_family(family)
        fitted = fit_constants([o for o in obs if o.family == family], prior)
        families[family] = {k: v for k, v in fitted.items() if v != table.shared[k]}
    return ConstantsTable(table.shared, {f: v for f, v in families.items() if v})


def leave_one_out(
    runs: Sequence[RecordedRun],
    bases: Mapping[str, RunBasis],
    obs: Sequence[Observation],
    table: ConstantsTable,
) -> list[Compared]:
    held = []
    for run in runs:
        if run.reported is None:
            continue
        rest = [o for o in obs if o.run_id != run.id]
        fitted = fit_table(rest, table) if rest else table
        held.append(compare(run, bases[run.id], fitted))
    return held
