"""`usage-proxy rollup rebuild` and `rollup check`: exit codes and one line each."""

from __future__ import annotations

from proxy import cli
from proxy.db.usage import record_rows
from tests.db.rows import chat


async def test_check_finds_a_broken_rollup_and_rebuild_repairs_it(sm, db_url, capsys):
    import asyncio

    from sqlalchemy import text

    await record_rows(sm, [chat(f"c{n}", team=("red", "blue")[n % 2]) for n in range(6)])

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(["rollup", *argv, "--database-url", db_url])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await asyncio.to_thread(run, "check")
    assert (code, out) == (0, "the rollup is right: 4 cells\n"), out
    async with sm.begin() as session:
        await session.execute(text("UPDATE usage_rollup SET events = events + 5"))
    code, out, _ = await asyncio.to_thread(run, "check")
    assert code == 1 and "differs in 2 cells" in out
    code, out, _ = await asyncio.to_thread(run, "rebuild", "--since", "2026-11-27")
    assert (code, out) == (0, "rebuilt the rollup from 2026-11-27: 2 cells\n")
    assert (await asyncio.to_thread(run, "check"))[0] == 0
    code, _, err = await asyncio.to_thread(run, "rebuild", "--since", "yesterday")
    assert code == 2 and err.count("\n") == 1 and "not an ISO date" in err
