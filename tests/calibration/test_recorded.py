import pytest

from proxy.calibration.recorded import RunsFileError, parse_runs

RUN = '{"id": "run_1", "object": "thread.run", "model": "gpt-4o", "tools": []}'


def test_a_line_reads_into_a_run():
    (run,) = parse_runs([f'{{"run": {RUN}, "steps": [], "messages": []}}'], "f")

    assert (run.line, run.id, run.kind, run.complete, run.reported) == (
        1,
        "run_1",
        "no_tools",
        True,
        None,
    )


def test_the_reported_usage_is_read_only_for_comparison():
    line = (
        '{"id": "x", "completeness": "partial", "run": {"id": "run_1", "usage": '
        '{"prompt_tokens": 5, "completion_tokens": 2}}, "steps": [{"id": "s", "usage": '
        '{"prompt_tokens": 5, "completion_tokens": 2}}]}'
    )
    (run,) = parse_runs([line], "f")

    assert (run.id, run.complete, run.reported, run.reported_steps()) == (
        "x",
        False,
        (5, 2),
        {"s": (5, 2)},
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "f:2: not JSON"),
        ("[1]", "f:2: a line must be a JSON object"),
        ('{"run": 3}', "f:2: 'run' must be a thread.run object with an id"),
        (f'{{"run": {RUN}, "steps": {{}}}}', "f:2: 'steps' must be a list of objects"),
        (f'{{"run": {RUN}, "messages": [1]}}', "f:2: 'messages' must be a list of objects"),
    ],
)
def test_a_bad_line_is_named(line, message):
    good = f'{{"run": {RUN}}}'
    with pytest.raises(RunsFileError) as error:
        parse_runs([good, line, good], "f")

    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)
