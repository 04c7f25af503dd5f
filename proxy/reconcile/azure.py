"""`billing import --azure-csv`: an Azure Cost Management actual-cost export, as billed rows.

The export has one row per day, resource and meter; its columns are spelled in PascalCase
(EA: `Date`, `MeterName`, `CostInBillingCurrency`, `BillingCurrencyCode`) or camelCase (MCA:
`date`, `meterName`, `costInBillingCurrency`, `billingCurrency`), with dates as MM/DD/YYYY or
YYYY-MM-DD. Rows of Azure OpenAI (meter subcategory or resource provider) are kept, others
skipped. A meter name such as "gpt-4o-0806-Inp-glbl Tokens" or "gpt 4o 0513 Output regional
Tokens" maps to a model and a token direction, written as OpenAI writes a line item
("gpt-4o-2024-08-06, input"), so that it reconciles the same way. Azure bills a resource, not
a key or a project, and a deployment serves one model: billed rows carry neither key nor
project and meet the proxy's Azure rows (which have no OpenAI project) at their model, and,
with `--group-by day,deployment`, at their deployment: a row's deployment is its
`DeploymentName` column where the export has one, else the `deployments/{name}` segment of its
resource id, else a "DeploymentName" in its `AdditionalInfo` JSON; a row with none stays "".
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from proxy.db.billing import replace_billed
from proxy.reconcile.billed import BilledRow

__all__ = ["AzureCsvError", "import_csv", "meter_line_item", "parse_csv"]

# Azure's dated snapshots are MMDD; OpenAI's the full date.
_SNAPSHOTS = {
    "0613": "2023-06-13", "1106": "2023-11-06", "0125": "2024-01-25", "0409": "2024-04-09",
    "0513": "2024-05-13", "0718": "2024-07-18", "0806": "2024-08-06", "0912": "2024-09-12",
    "1120": "2024-11-20", "1217": "2024-12-17", "0131": "2025-01-31", "0414": "2025-04-14",
    "0416": "2025-04-16", "0807": "2025-08-07",
}  # fmt: skip
_DEPLOYMENT_WORDS = {"glbl", "global", "regnl", "regional", "dzone", "datazone", "data", "zone",
                     "batch", "tokens", "token", "1k", "1m", "ptu", "std", "standard"}  # fmt: skip
_COLUMNS = {
    "date": ("Date", "date", "UsageDate", "usageDate"),
    "meter": ("MeterName", "meterName"),
    "cost": ("CostInBillingCurrency", "costInBillingCurrency", "Cost", "cost", "PreTaxCost"),
    "currency": ("BillingCurrencyCode", "billingCurrency", "BillingCurrency", "Currency"),
    "subcategory": ("MeterSubCategory", "meterSubCategory"),
    "resource": ("ResourceId", "resourceId", "InstanceId", "instanceId"),
    "deployment": ("DeploymentName", "deploymentName"),
    "info": ("AdditionalInfo", "additionalInfo"),
}


class AzureCsvError(ValueError):
    """The file is not an actual-cost export we can read; the message says where."""


def meter_line_item(meter: str) -> str:
    """An OpenAI-style line item for an Azure OpenAI meter name; the meter itself (lowercase)
    when no token direction is in it, which reconciles as `other`."""
    words = [w for w in re.split(r"[\s_-]+", meter.strip().lower()) if w]
    direction = None
    model: list[str] = []
    cached = False
    for word in words:
        if word in ("inp", "input", "in"):
            direction = "input"
        elif word in ("outp", "output", "out"):
            direction = "output"
        elif word in ("cached", "cchd", "cache", "cached-inp"):
            cached = True
        elif word not in _DEPLOYMENT_WORDS:
            model.append(word)
    if direction is None and "embedding" in model:
        direction = "input"  # embeddings bill input tokens only
    if direction is None or not model:
        return meter.strip().lower()
    if model[-1] in _SNAPSHOTS:
        model[-1] = _SNAPSHOTS[model[-1]]
    return f"{'-'.join(model)}, {'cached input' if cached else direction}"


def _column(header: list[str], name: str, required: bool = True) -> str | None:
    for spelling in _COLUMNS[name]:
        if spelling in header:
            return spelling
    if required:
        raise AzureCsvError(f"no {_COLUMNS[name][0]} column (or {_COLUMNS[name][1]})")
    return None


def _date(text: str, line: int) -> str:
    text = text.strip()
    for fmt in ("%Y-%m-%d", "%m/%d/%Y", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return dt.datetime.strptime(text, fmt).date().isoformat()
        except ValueError:
            continue
    raise AzureCsvError(f"line {line}: {text[:40]!r} is not a date")


def _is_openai(row: Mapping[str, str], sub: str | None, resource: str | None) -> bool:
    if sub and "openai" in (row.get(sub) or "").lower():
        return True
    return bool(resource) and "microsoft.cognitiveservices" in (row.get(resource) or "").lower()


def _deployment(row: Mapping[str, str], columns: Mapping[str, str | None]) -> str:
    if (named := columns["deployment"]) and (row.get(named) or "").strip():
        return row[named].strip()[:255]
    if resource := columns["resource"]:
        parts = (row.get(resource) or "").strip("/").split("/")
        for i, part in enumerate(parts[:-1]):
            if part.lower() == "deployments" and parts[i + 1]:
                return parts[i + 1][:255]
    if (info := columns["info"]) and (text := (row.get(info) or "").strip()):
        try:
            found = json.loads(text)
        except ValueError:
            return ""
        if isinstance(found, dict):
            for key in ("DeploymentName", "deploymentName"):
                if isinstance(found.get(key), str):
                    return found[key].strip()[:255]
    return ""


def parse_csv(text: str) -> tuple[list[BilledRow], int]:
    """(billed rows summed per day, deployment and line item, rows skipped as not Azure
    OpenAI)."""
    reader = csv.DictReader(io.StringIO(text))
    header = list(reader.fieldnames or [])
    date, meter, cost = _column(header, "date"), _column(header, "meter"), _column(header, "cost")
    currency = _column(header, "currency", required=False)
    sub = _column(header, "subcategory", required=False)
    resource = _column(header, "resource", required=False)
    optional = {
        name: _column(header, name, required=False) for name in ("resource", "deployment", "info")
    }
    if sub is None and resource is None:
        raise AzureCsvError("no MeterSubCategory or ResourceId column to find Azure OpenAI by")
    sums: dict[tuple[str, str, str, str], Decimal] = {}
    skipped = 0
    for line, row in enumerate(reader, start=2):
        if not _is_openai(row, sub, resource):
            skipped += 1
            continue
        try:
            amount = Decimal((row.get(cost) or "0").strip() or "0")
        except InvalidOperation:
            raise AzureCsvError(f"line {line}: {row.get(cost)!r} is not a cost") from None
        day = _date(row.get(date) or "", line)
        cur = ((row.get(currency) if currency else None) or "usd").strip().lower()
        key = (day, _deployment(row, optional), meter_line_item(row.get(meter) or ""), cur)
        sums[key] = sums.get(key, Decimal(0)) + amount
    rows = [
        BilledRow(d, "", "", item, v, c, deployment=dep)
        for (d, dep, item, c), v in sorted(sums.items())
    ]
    return rows, skipped


async def import_csv(sm: async_sessionmaker[AsyncSession], text: str) -> str:
    """Store the export's Azure OpenAI costs, replacing the days it covers; a summary line."""
    rows, skipped = parse_csv(text)
    days = sorted({r.day for r in rows})
    changed = await replace_billed(sm, "azure", days, rows)
    totals: dict[str, Decimal] = {}
    for row in rows:
        totals[row.currency] = totals.get(row.currency, Decimal(0)) + row.amount
    billed = ", ".join(f"{v} {c}" for c, v in sorted(totals.items())) or "0 usd"
    return (
        f"imported {len(days)} days: {len(rows)} billed rows ({changed} changed), {billed} "
        f"billed; {skipped} rows skipped (not Azure OpenAI)"
    )
