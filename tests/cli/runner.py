"""Running the command line in-process, for the CLI tests."""

from __future__ import annotations

from proxy import cli


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
