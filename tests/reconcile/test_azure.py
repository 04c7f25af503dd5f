from __future__ import annotations

from decimal import Decimal

import pytest

from proxy.reconcile.azure import AzureCsvError, meter_line_item, parse_csv
from proxy.reconcile.lineitems import billed_label


@pytest.mark.parametrize(
    ("meter", "item"),
    [
        ("gpt-4o-0806-Inp-glbl Tokens", "gpt-4o-2024-08-06, input"),
        ("gpt-4o-0806-Outp-glbl Tokens", "gpt-4o-2024-08-06, output"),
        ("gpt 4o 0513 Output regional Tokens", "gpt-4o-2024-05-13, output"),
        ("gpt-4o-mini-0718-cached-Inp-glbl Tokens", "gpt-4o-mini-2024-07-18, cached input"),
        ("text-embedding-3-small Tokens", "text-embedding-3-small, input"),
        ("Standard Hosting Hours", "standard hosting hours"),
    ],
)
def test_meters_map_to_line_items(meter, item):
    assert meter_line_item(meter) == item


def test_hosting_is_other():
    assert billed_label(meter_line_item("Standard Hosting Hours")) == "other"


EA = """Date,MeterCategory,MeterSubCategory,MeterName,ResourceId,Quantity,CostInBillingCurrency,BillingCurrencyCode
11/01/2026,Cognitive Services,Azure OpenAI,gpt-4o-0806-Inp-glbl Tokens,/subscriptions/s/providers/Microsoft.CognitiveServices/accounts/acme,0.5,0.00125,USD
11/01/2026,Cognitive Services,Azure OpenAI,gpt-4o-0806-Inp-glbl Tokens,/subscriptions/s/providers/Microsoft.CognitiveServices/accounts/acme2,0.5,0.00125,USD
11/01/2026,Storage,Tables,LRS Data Stored,/subscriptions/s/providers/Microsoft.Storage/x,1,9.99,USD
"""  # noqa: E501
MCA = """date,meterName,meterSubCategory,costInBillingCurrency,billingCurrency
2026-11-02,gpt-4o-0806-Outp-glbl Tokens,Azure OpenAI,0.01,USD
"""


def test_ea_rows_sum_per_day_and_line_item_and_skip_other_services():
    rows, skipped = parse_csv(EA)
    assert skipped == 1
    assert [(r.day, r.line_item, r.amount, r.currency) for r in rows] == [
        ("2026-11-01", "gpt-4o-2024-08-06, input", Decimal("0.00250"), "usd")
    ]


def test_mca_spelling():
    rows, _ = parse_csv(MCA)
    assert [(r.day, r.line_item, r.amount) for r in rows] == [
        ("2026-11-02", "gpt-4o-2024-08-06, output", Decimal("0.01"))
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n", "no Date column"),
        ("Date,MeterName,Cost\n11/01/2026,x,1\n", "no MeterSubCategory or ResourceId"),
        ("Date,MeterName,Cost,MeterSubCategory\nyesterday,x,1,Azure OpenAI\n", "line 2:"),
        ("Date,MeterName,Cost,MeterSubCategory\n11/01/2026,x,lots,Azure OpenAI\n", "not a cost"),
    ],
)
def test_bad_files(text, message):
    with pytest.raises(AzureCsvError, match=message):
        parse_csv(text)


INFO = '{""DeploymentName"": ""info""}'


def test_a_row_s_deployment_from_its_column_resource_id_or_additional_info():
    account = "/subscriptions/s/providers/Microsoft.CognitiveServices/accounts/acme"
    text = (
        "Date,MeterSubCategory,MeterName,ResourceId,DeploymentName,AdditionalInfo,Cost\n"
        f"2026-11-01,Azure OpenAI,gpt-4o-0806-Inp-glbl Tokens,{account},named,,1\n"
        f"2026-11-01,Azure OpenAI,gpt-4o-0806-Inp-glbl Tokens,{account}/deployments/seg,,,2\n"
        f'2026-11-01,Azure OpenAI,gpt-4o-0806-Inp-glbl Tokens,{account},,"{INFO}",3\n'
        f"2026-11-01,Azure OpenAI,Standard Hosting Hours,{account},,,4\n"
    )
    rows, _ = parse_csv(text)
    assert sorted((r.deployment, r.amount) for r in rows) == [
        ("", Decimal("4")), ("info", Decimal("3")), ("named", Decimal("1")), ("seg", Decimal("2")),
    ]  # fmt: skip
