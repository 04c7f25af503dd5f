"""FOCUS 1.2 export (issue 15, point 6), end to end on both backends: traffic through the proxy
with the openai SDK, then `report --format focus` (and the HTTP endpoint) checked against the
specification's Mandatory columns, their nullability and types, one row per usage row or per
group, and the same money as the report."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from decimal import Decimal

import aiohttp
import pytest

from proxy.settings import Settings
from tests.e2e.conftest import RunningProxy, client_for
from tests.e2e.test_events import rows, settle
from tests.e2e.test_unpriced import run_cli

# FOCUS 1.2, Mandatory columns: name -> (data type, nulls allowed). From the specification's
# column definitions (https://focus.finops.org/focus-specification/v1-2/).
MANDATORY = {
    "BilledCost": ("decimal", False),
    "BillingAccountId": ("string", False),
    "BillingAccountName": ("string", True),
    "BillingCurrency": ("currency", False),
    "BillingPeriodEnd": ("datetime", False),
    "BillingPeriodStart": ("datetime", False),
    "ChargeCategory": ("string", False),
    "ChargeClass": ("string", True),
    "ChargeDescription": ("string", True),
    "ChargePeriodEnd": ("datetime", False),
    "ChargePeriodStart": ("datetime", False),
    "ContractedCost": ("decimal", False),
    "EffectiveCost": ("decimal", False),
    "InvoiceIssuerName": ("string", False),
    "ListCost": ("decimal", False),
    "PricingQuantity": ("decimal", True),
    "PricingUnit": ("string", True),
    "ProviderName": ("string", False),
    "PublisherName": ("string", False),
    "ServiceCategory": ("string", False),
    "ServiceName": ("string", False),
}
# Conditional columns the issue asks for.
ASKED = {
    "ResourceId": ("string", True),
    "ResourceName": ("string", True),
    "SkuId": ("string", True),
    "ConsumedQuantity": ("decimal", True),
    "ConsumedUnit": ("string", True),
    "Tags": ("json", True),
}
CHARGE_CATEGORIES = {"Usage", "Purchase", "Tax", "Credit", "Adjustment"}
SERVICE_CATEGORIES = {"AI and Machine Learning"}  # the one that fits; the list has 19
DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")


def parse_focus(text: str) -> list[dict[str, str]]:
    table = list(csv.DictReader(io.StringIO(text)))
    header = next(csv.reader(io.StringIO(text)))
    for name in [*MANDATORY, *ASKED]:
        assert name in header, name
    for row in table:
        for name, (kind, nullable) in {**MANDATORY, **ASKED}.items():
            value = row[name]
            if value == "":
                assert nullable, (name, row)
                continue
            if kind == "decimal":
                Decimal(value)
            elif kind == "datetime":
                assert DATETIME.fullmatch(value), (name, value)
            elif kind == "currency":
                assert re.fullmatch(r"[A-Z]{3}", value), value
            elif kind == "json":
                tags = json.loads(value)
                assert isinstance(tags, dict) and all(isinstance(v, str) for v in tags.values())
        assert row["ChargeCategory"] in CHARGE_CATEGORIES
        assert row["ServiceCategory"] in SERVICE_CATEGORIES
        start, end = (_when(row["ChargePeriodStart"]), _when(row["ChargePeriodEnd"]))
        bill_start, bill_end = (_when(row["BillingPeriodStart"]), _when(row["BillingPeriodEnd"]))
        assert bill_start <= start < end <= bill_end, row
        assert row["BilledCost"] == row["EffectiveCost"] == row["ListCost"]
    return table


def _when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
async def proxy(db_url: str, upstream, start_proxy) -> RunningProxy:
    settings = Settings(
        upstream=upstream.url, database_url=db_url, key_secret="s", admin_token="admin-t"
    )
    return await start_proxy(settings)


async def test_focus_export_per_row_and_per_group(proxy: RunningProxy, db_url: str, sm, capsys):
    client = client_for(proxy, default_headers={"X-Usage-Tag": "nightly"})
    messages = [{"role": "user", "content": "hi"}]
    await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    await client.chat.completions.create(model="acme-llm-1", messages=messages)  # unpriced
    await client.embeddings.create(model="text-embedding-3-small", input="hi")
    await client.responses.create(model="gpt-4.1", input="hi")
    await settle(proxy)
    recorded = await rows(sm)
    assert len(recorded) == 5

    code, out, err = await run_cli(capsys, "report", "--database-url", db_url, "--format", "focus")
    assert code == 0, err
    table = parse_focus(out)
    assert sorted(r["ResourceId"] for r in table) == sorted(r["object_id"] for r in recorded)
    total = sum(r["cost_usd"] or Decimal(0) for r in recorded)
    assert sum(Decimal(r["BilledCost"]) for r in table) == total
    unpriced = [r for r in table if r["SkuId"] == "acme-llm-1"]
    assert [(r["x_Priced"], r["BilledCost"]) for r in unpriced] == [("false", "0")]
    assert "no price" in unpriced[0]["ChargeDescription"]
    tags = json.loads(table[0]["Tags"])
    assert (tags["team"], tags["tag"], tags["key_hint"]) == ("unassigned", "nightly", "sk-...1234")

    code, out, err = await run_cli(
        capsys, "report", "--database-url", db_url, "--format", "focus", "--group-by", "model"
    )
    groups = {r["SkuId"]: r for r in parse_focus(out)}
    assert set(groups) == {"gpt-4o-mini", "acme-llm-1", "text-embedding-3-small", "gpt-4.1"}
    mini = groups["gpt-4o-mini"]
    assert mini["x_Events"] == "2" and mini["ResourceId"] == ""
    expected = sum(r["total_tokens"] for r in recorded if r["model"] == "gpt-4o-mini")
    assert Decimal(mini["ConsumedQuantity"]) == expected
    assert sum(Decimal(r["BilledCost"]) for r in groups.values()) == total

    async with aiohttp.ClientSession() as http:
        url = proxy.url + "/_proxy/usage?format=focus&group_by=team"
        async with http.get(url, headers={"Authorization": "Bearer admin-t"}) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/csv")
            [team] = parse_focus(await response.text())
    assert (team["x_Events"], Decimal(team["BilledCost"])) == ("5", total)
