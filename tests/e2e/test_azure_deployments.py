"""Azure OpenAI deployments (issue 16, point 6), end to end on both backends: rows of requests
to /openai/deployments/{name}/... record the deployment; `report --group-by deployment` and the
views show it; an Azure Cost Management export reconciles against the rows by deployment and
day."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import openai
from sqlalchemy import text

from proxy.settings import Settings
from tests.cli.runner import run
from tests.e2e.conftest import wait_for
from tests.e2e.test_events import KEY, MESSAGES, exactly

_HEADER = (
    "Date,MeterCategory,MeterSubCategory,MeterName,ResourceId,Quantity,"
    "CostInBillingCurrency,BillingCurrencyCode\n"
)
_ACCOUNT = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/acme"


def _line(day: str, meter: str, resource: str, cost: Decimal) -> str:
    month, dd, year = day[5:7], day[8:10], day[:4]
    return f"{month}/{dd}/{year},Cognitive Services,Azure OpenAI,{meter},{resource},1,{cost},USD\n"


async def test_deployments_are_recorded_and_reconciled(
    db_url: str, upstream, start_proxy, sm, capsys, tmp_path
):
    proxy = await start_proxy(Settings(upstream=upstream.url, database_url=db_url, key_secret="s"))
    upstream.deployment_models.update(
        {
            "chat-prod": "gpt-4o-mini",
            "chat-dev": "gpt-4o-mini",
            "embed-small": "text-embedding-3-small",
        }
    )
    azure = openai.AsyncAzureOpenAI(
        azure_endpoint=proxy.url, api_version="2024-10-21", api_key=KEY, max_retries=0
    )
    for deployment in ("chat-prod", "chat-prod", "chat-dev"):
        await azure.chat.completions.create(model=deployment, messages=MESSAGES)
    await azure.embeddings.create(model="embed-small", input="hi")
    found = await wait_for(lambda: exactly(sm, 4))
    assert sorted(r["deployment"] for r in found) == [
        "chat-dev", "chat-prod", "chat-prod", "embed-small",
    ]  # fmt: skip
    # An OpenAI path names no deployment.
    plain = openai.AsyncOpenAI(api_key=KEY, base_url=proxy.base_url, max_retries=0)
    await plain.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    found = await wait_for(lambda: exactly(sm, 5))
    assert [r["deployment"] for r in found if r["key_hint"] and r["kind"] == "chat.completion"
            ].count(None) == 1  # fmt: skip

    async with sm() as session:
        view = (await session.execute(text("SELECT deployment FROM usage"))).scalars().all()
    assert sorted(filter(None, view)) == ["chat-dev", "chat-prod", "chat-prod", "embed-small"]

    async def cli(*argv: str) -> str:
        code, out, err = await asyncio.to_thread(run, capsys, *argv)
        assert code == 0, err
        return out

    report = json.loads(
        await cli(
            "report", "--database-url", db_url, "--group-by", "deployment", "--format", "json"
        )
    )
    events = {r["deployment"]: r["events"] for r in report if "deployment" in r}
    assert events == {"chat-dev": 1, "chat-prod": 2, "embed-small": 1, None: 1}

    recorded: dict[str, Decimal] = {}
    for row in found:
        if row["deployment"]:
            recorded[row["deployment"]] = recorded.get(row["deployment"], 0) + row["cost_usd"]
    day = found[0]["occurred_at"].date().isoformat()
    month = day[:7]
    csv = _HEADER + "".join(
        [
            _line(day, "gpt-4o-mini-0718-Inp-glbl Tokens", f"{_ACCOUNT}/deployments/chat-prod",
                  recorded["chat-prod"]),
            # chat-dev was billed 5 cents more than the proxy saw: flagged.
            _line(day, "gpt-4o-mini-0718-Inp-glbl Tokens", f"{_ACCOUNT}/deployments/chat-dev",
                  recorded["chat-dev"] + Decimal("0.05")),
            _line(day, "text-embedding-3-small Tokens", f"{_ACCOUNT}/deployments/embed-small",
                  recorded["embed-small"]),
            # The account's own meter: no deployment.
            _line(day, "Standard Hosting Hours", _ACCOUNT, Decimal("1.00")),
        ]
    )  # fmt: skip
    path = tmp_path / "costs.csv"
    path.write_text(csv)
    out = await cli("billing", "import", "--database-url", db_url, "--azure-csv", str(path))
    assert out.startswith("imported 1 days: 4 billed rows (4 changed)")
    rows = json.loads(
        await cli(
            "reconcile",
            "--database-url",
            db_url,
            "--month",
            month,
            "--group-by",
            "day,deployment",
            "--format",
            "json",
        ),
        parse_float=Decimal,
    )
    got = {
        r["deployment"]: (r["recorded_usd"], r["billed_usd"], r["flagged"])
        for r in rows
        if not r["total"]
    }
    assert got["chat-prod"] == (recorded["chat-prod"], recorded["chat-prod"], False)
    assert got["chat-dev"][2] is True
    assert got["chat-dev"][1] - got["chat-dev"][0] == Decimal("0.05")
    assert got["embed-small"][2] is False
    # The OpenAI row and the account's hosting meter meet under no deployment.
    assert got[None][1] == Decimal("1.00")
