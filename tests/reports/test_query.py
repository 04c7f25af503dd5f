"""ReportQuery: one parser for the CLI's options and the HTTP parameters."""

from __future__ import annotations

import datetime as dt

import pytest
from multidict import MultiDict

from proxy.db.queries import GROUP_FIELDS as QUERY_FIELDS
from proxy.reports.query import (
    GROUP_FIELDS,
    ReportError,
    ReportQuery,
    parse_group_by,
    parse_month,
    parse_when,
)

UTC = dt.UTC


def test_every_field_the_queries_group_by_can_be_asked_for():
    assert parse_group_by(",".join(QUERY_FIELDS)) == list(QUERY_FIELDS) == list(GROUP_FIELDS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-02", dt.datetime(2026, 11, 2, tzinfo=UTC)),
        ("2026-11-02T10:30", dt.datetime(2026, 11, 2, 10, 30, tzinfo=UTC)),
        ("2026-11-02T10:30+01:00", dt.datetime(2026, 11, 2, 9, 30, tzinfo=UTC)),
    ],
)
def test_when_is_utc(text: str, expected: dt.datetime):
    assert parse_when(text) == expected


def test_a_month_ends_where_the_next_begins():
    assert parse_month("2026-12") == (
        dt.datetime(2026, 12, 1, tzinfo=UTC),
        dt.datetime(2027, 1, 1, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("params", "param", "message"),
    [
        ({"colour": "red"}, "colour", "unknown parameter 'colour'"),
        ({"format": "table"}, "format", "format: 'table' is not one of json, csv"),
        ({"since": "yesterday"}, "since", "since: 'yesterday' is not an ISO date"),
        ({"month": "2026-11", "until": "2026-12-01"}, "month", "month cannot be combined"),
        ({"since": "2026-12-01", "until": "2026-11-01"}, "since", "since must be before until"),
        ({"group_by": "team,colour"}, "group_by", "group_by: unknown field 'colour'"),
        ({"kind": "run"}, "kind", "kind: unknown kind 'run' (one of assistants.run,"),
        ({"month": "2026-1"}, "month", "month: '2026-1' is not a month (YYYY-MM)"),
    ],
)
def test_http_parameters_are_named_as_sent(params: dict, param: str, message: str):
    with pytest.raises(ReportError) as caught:
        ReportQuery.from_params(MultiDict(params))
    assert (caught.value.param, str(caught.value)[: len(message)]) == (param, message)


def test_a_repeated_http_parameter_is_refused():
    with pytest.raises(ReportError, match="'team' is given more than once"):
        ReportQuery.from_params(MultiDict([("team", "a"), ("team", "b")]))


def test_http_parameters_make_the_query():
    query = ReportQuery.from_params(
        MultiDict(month="2026-11", group_by="team,day", team="red", format="csv")
    )
    assert query == ReportQuery(
        dt.datetime(2026, 11, 1, tzinfo=UTC),
        dt.datetime(2026, 12, 1, tzinfo=UTC),
        ("team", "day"),
        {"team": "red", "kind": None, "model": None},
        "csv",
    )


def test_command_line_options_are_named_as_flags():
    with pytest.raises(ReportError, match=r"^--month cannot be combined with --since or --until$"):
        ReportQuery.from_args(
            since=parse_when("2026-11-01"),
            until=None,
            month=parse_month("2026-11"),
            group_by=None,
            filters={},
            fmt="table",
        )
