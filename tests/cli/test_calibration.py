"""`usage-proxy estimate` and `usage-proxy calibrate`, run in process as a user runs them."""

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest

from proxy import cli
from proxy.accounting.estimate.runs import default_table, estimate_run
from proxy.accounting.estimate.tokenizer import counter_for_model
from proxy.accounting.usage import UsageRow
from proxy.db.engine import make_engine, make_sessionmaker
from proxy.db.usage import record_rows

T0 = 1_760_000_000


def no_tools_run(run_id: str, question: str, answer: str, usage: tuple[int, int] | None) -> dict:
    """One run of an assistant with no tools, as the API returns it, with one turn."""
    reported = None if usage is None else {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
    msg_id, step_id = f"msg_{run_id}", f"step_{run_id}"
    return {
        "id": f"line-{run_id}",
        "run": {
            "id": run_id,
            "object": "thread.run",
            "created_at": T0,
            "model": "gpt-4o-mini",
            "tools": [],
            "instructions": None,
            "usage": reported,
        },
        "steps": [
            {
                "id": step_id,
                "object": "thread.run.step",
                "run_id": run_id,
                "created_at": T0 + 1,
                "completed_at": T0 + 1,
                "type": "message_creation",
                "usage": reported,
                "step_details": {
                    "type": "message_creation",
                    "message_creation": {"message_id": msg_id},
                },
            }
        ],
        "messages": [
            {
                "id": f"u_{run_id}",
                "object": "thread.message",
                "created_at": T0 - 1,
                "role": "user",
                "run_id": None,
                "content": [{"type": "text", "text": {"value": question}}],
            },
            {
                "id": msg_id,
                "object": "thread.message",
                "created_at": T0 + 1,
                "role": "assistant",
                "run_id": run_id,
                "content": [{"type": "text", "text": {"value": answer}}],
            },
        ],
    }


def tokens(text: str) -> int:
    return counter_for_model("gpt-4o-mini")(text)


def truth(question: str, answer: str, base: int) -> tuple[int, int]:
    """A server whose system prompt is `base` tokens, and the chat format's overheads."""
    return base + 4 + tokens(question), 2 + tokens(answer)


QUESTIONS = [
    ("Hello there!", "Hi! How can I help?"),
    ("What is the capital of France?", "Paris."),
    ("Write a haiku about tea.", "Steam curls from the cup,\nquiet leaves unfold slowly,\nwarmth"),
    ("Count to five.", "1, 2, 3, 4, 5."),
]


def write_runs(path: Path, base: int, *, usage: bool = True) -> list[dict]:
    lines = [
        no_tools_run(f"run_{i}", q, a, truth(q, a, base) if usage else None)
        for i, (q, a) in enumerate(QUESTIONS)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_json_gives_the_collectors_numbers_beside_the_reported(capsys, tmp_path):
    path = tmp_path / "runs.jsonl"
    lines = write_runs(path, base=24)

    code, out, err = run(capsys, "estimate", "--runs", str(path), "--format", "json")

    assert (code, err) == (0, "")
    expected = []
    for line in lines:
        got = estimate_run(
            line["run"], line["steps"], line["messages"], counter_for_model("gpt-4o-mini")
        )
        usage = line["run"]["usage"]
        expected.append(
            {
                "id": line["id"],
                "prompt_tokens": got.prompt_tokens,
                "completion_tokens": got.completion_tokens,
                "reported_prompt_tokens": usage["prompt_tokens"],
                "reported_completion_tokens": usage["completion_tokens"],
            }
        )
    assert json.loads(out) == expected
    # The shipped gpt-4o constants fit this server: base 24, 4 per user message, 2 per answer.
    assert [(e["prompt_tokens"], e["completion_tokens"]) for e in expected] == [
        (e["reported_prompt_tokens"], e["reported_completion_tokens"]) for e in expected
    ]


def test_estimate_never_reads_the_runs_usage(capsys, tmp_path):
    with_usage, without = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_runs(with_usage, base=500)
    write_runs(without, base=500, usage=False)

    _, a, _ = run(capsys, "estimate", "--runs", str(with_usage), "--format", "json")
    _, b, _ = run(capsys, "estimate", "--runs", str(without), "--format", "json")

    got_a, got_b = json.loads(a), json.loads(b)
    assert [(x["prompt_tokens"], x["completion_tokens"]) for x in got_a] == [
        (x["prompt_tokens"], x["completion_tokens"]) for x in got_b
    ]
    assert {x["reported_prompt_tokens"] for x in got_b} == {None}


def test_estimate_table_shows_errors_per_run_and_per_kind(capsys, tmp_path):
    path = tmp_path / "runs.jsonl"
    write_runs(path, base=34)  # 10 tokens more than the shipped table expects

    code, out, _ = run(capsys, "estimate", "--runs", str(path))

    assert code == 0
    assert out.splitlines()[0] == f"estimator {default_table().version}"
    first = next(line for line in out.splitlines() if line.startswith("line-run_0"))
    prompt, _ = truth(*QUESTIONS[0], base=34)
    assert f"{100 * -10 / prompt:+.1f}%" in first
    summary = next(line for line in out.splitlines() if line.startswith("no_tools gpt-4o "))
    assert summary.split()[2] == "4"  # runs


def test_a_bad_line_is_one_error_line_naming_it(capsys, tmp_path):
    path = tmp_path / "runs.jsonl"
    write_runs(path, base=24)
    path.write_text(path.read_text() + '{"run": {"object": "thread.run"}}\n')

    code, out, err = run(capsys, "estimate", "--runs", str(path))

    assert (code, out) == (2, "")
    assert err == f"usage-proxy: error: {path}:5: 'run' must be a thread.run object with an id\n"
    code, _, err = run(capsys, "estimate", "--runs", str(tmp_path / "missing.jsonl"))
    assert code == 2 and err.count("\n") == 1 and "missing.jsonl: cannot read" in err


def test_calibrate_fits_writes_a_config_and_the_estimate_then_matches(capsys, tmp_path):
    path, written = tmp_path / "runs.jsonl", tmp_path / "fitted.toml"
    write_runs(path, base=64)

    code, out, err = run(capsys, "calibrate", "--runs", str(path), "--write", str(written))

    assert (code, err) == (0, "")
    assert "fitted on 8 observations from 4 runs" in out
    assert "leave-one-out" in out
    assert "gpt-4o: " in out and "no change" not in out.split("gpt-4o: ")[1].splitlines()[0]
    code, out, _ = run(
        capsys, "estimate", "--runs", str(path), "--format", "json", "--config", str(written)
    )
    assert code == 0
    assert all(
        (r["prompt_tokens"], r["completion_tokens"])
        == (r["reported_prompt_tokens"], r["reported_completion_tokens"])
        for r in json.loads(out)
    )


def test_calibrate_needs_something_to_fit(capsys, tmp_path):
    assert run(capsys, "calibrate")[0] == 2
    path = tmp_path / "runs.jsonl"
    write_runs(path, base=24, usage=False)
    code, _, err = run(capsys, "calibrate", "--runs", str(path))
    assert (code, err) == (2, "usage-proxy: error: no run carries reported usage to fit to\n")


def test_calibrate_refits_from_the_proxys_own_rows(capsys, tmp_path, db_url):
    # Rows of runs whose upstream reported usage, with the estimate's bases kept beside it.
    path = tmp_path / "runs.jsonl"
    lines = write_runs(path, base=64)
    rows = []
    for line in lines:
        got = estimate_run(
            line["run"], line["steps"], line["messages"], counter_for_model("gpt-4o-mini")
        )
        usage = line["run"]["usage"]
        rows.append(
            UsageRow(
                kind="assistants.run",
                object_id=line["run"]["id"],
                model="gpt-4o-mini",
                occurred_at=dt.datetime.now(dt.UTC),
                usage_source="reported",
                prompt_tokens=usage["prompt_tokens"],
                completion_tokens=usage["completion_tokens"],
                estimated_prompt_tokens=got.prompt_tokens,
                estimator=got.estimator,
                estimate_basis=json.dumps(got.basis_json()),
            )
        )

    async def seed() -> None:
        engine = make_engine(db_url)
        try:
            await record_rows(make_sessionmaker(engine), rows)
        finally:
            await engine.dispose()

    asyncio.run(seed())

    code, out, err = run(capsys, "calibrate", "--database-url", db_url)

    assert (code, err) == (0, "")
    assert "fitted on 8 observations from 4 runs" in out
    changed = out.split("gpt-4o: ")[1].splitlines()[0]
    assert "base_prompt 24 -> " in changed or "per_user_message 4 -> " in changed


@pytest.mark.parametrize("fmt", ["yaml"])
def test_estimate_refuses_an_unknown_format(capsys, tmp_path, fmt):
    path = tmp_path / "runs.jsonl"
    write_runs(path, base=24)
    code, _, err = run(capsys, "estimate", "--runs", str(path), "--format", fmt)
    assert code == 2 and err.count("\n") == 1


def test_calibrate_on_a_missing_database_names_it_and_creates_nothing(capsys, tmp_path):
    db = tmp_path / "usage.db"
    code, _, err = run(capsys, "calibrate", "--database-url", f"sqlite:///{db}")
    assert code == 2, err
    assert f"(the file {db}) does not exist" in err and err.count("\n") == 1, err
    assert not db.exists()
