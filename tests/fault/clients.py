"""The fault suite's clients: workers driving Assistants runs through the official openai SDK,
each with its own API key, spread over the proxy replicas.

A client routes every run to a home replica and, when that replica is down, to another one, as a
load balancer would. An SDK call that fails because its replica was killed under it is counted
in `killed_failures` and done again on another replica; any other SDK call that raises is a
client request failed because of the proxy (`failures`, which must stay empty: faults are only
injected into the steps and messages fetches, which clients never call).

Every terminal run a client receives is a sighting, kept with the replica (and incarnation)
that relayed it, so the scenario can tell which runs only a killed process had seen.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai

from tests.fault.harness import ProxyProcess, wait_until

__all__ = ["PLANS", "TERMINAL", "Client", "Replica", "RunSpec", "Tally"]

TERMINAL = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})
QUESTION = "Write Python code that calculates 2+2 and give me the output."
# Assistant metadata plans the fake's run (tests/e2e/fake_upstream.py); weights of the mix.
PLANS: dict[str, tuple[dict[str, str], int]] = {
    "reported": ({"code_calls": "1"}, 40),
    "estimated": ({"code_calls": "1", "usage": "no"}, 30),
    "file_search": ({"code_calls": "0", "file_search_calls": "1", "usage": "no"}, 10),
    "failed": ({"outcome": "failed", "usage": "no"}, 10),
    "incomplete": ({"outcome": "incomplete"}, 10),
}
_POLL_PACE = 0.005  # a polling client's pause between retrieves (the fake asks for 5 ms)

T = TypeVar("T")


@dataclass
class Replica:
    proc: ProxyProcess
    up: bool = True
    epoch: int = 0  # incremented when the process is killed

    @property
    def name(self) -> str:
        return self.proc.name


@dataclass(frozen=True)
class RunSpec:
    plan: str
    # "poll", "create_and_run", "stream", or "forget" (create the run, never ask again)
    mode: str
    home: int  # index of the replica the run goes through
    extra_polls: int  # retrieves after the run was seen terminal
    cross: bool  # the first extra poll goes through another replica


@dataclass
class Tally:
    requests: int = 0
    killed_failures: int = 0
    failures: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)  # runs a failure stopped
    runs_done: int = 0
    sightings: dict[str, set[tuple[str, int]]] = field(default_factory=lambda: defaultdict(set))
    threads: dict[str, str] = field(default_factory=dict)  # run id -> thread id
    # Threads clients created themselves (their runs' creates name them: a run intent's).
    created_threads: set[str] = field(default_factory=set)
    sighted_at: dict[str, float] = field(default_factory=dict)  # run id -> last, monotonic
    in_flight: Counter[str] = field(default_factory=Counter)  # replica name -> SDK calls
    plans: dict[str, str] = field(default_factory=dict)  # run id -> plan
    keys: dict[str, str] = field(default_factory=dict)  # run id -> key
    # Runs never polled after their create: where and when (monotonic) the create answered.
    forgotten: dict[str, tuple[tuple[str, int], float]] = field(default_factory=dict)
    # Called with (run id, (replica, incarnation)) as a client receives a finished run.
    on_sighting: list[Callable[[str, tuple[str, int]], None]] = field(default_factory=list)


class Client:
    def __init__(
        self,
        key: str,
        replicas: list[Replica],
        tally: Tally,
        rng: random.Random,
        *,
        pace: float = _POLL_PACE,
    ):
        self.key = key
        self._pace = pace
        self._replicas = replicas
        self._tally = tally
        self._rng = rng
        self._sdks: dict[tuple[str, int], openai.AsyncOpenAI] = {}
        self._assistants: dict[str, str] = {}

    async def close(self) -> None:
        for sdk in self._sdks.values():
            await sdk.close()

    # --- routing ---------------------------------------------------------------------------
    async def _pick(self, home: int | None) -> Replica:
        async def up() -> list[Replica]:
            return [r for r in self._replicas if r.up]

        alive = await wait_until(up, 60, interval=0.02, what="a replica up")
        if home is not None and self._replicas[home].up:
            return self._replicas[home]
        return self._rng.choice(alive)

    def _sdk(self, replica: Replica) -> openai.AsyncOpenAI:
        # One SDK client per incarnation: pooled connections to a killed process are dead.
        slot = (replica.name, replica.epoch)
        if slot not in self._sdks:
            self._sdks[slot] = openai.AsyncOpenAI(
                api_key=self.key,
                base_url=replica.proc.url + "/v1",
                max_retries=0,
                timeout=60.0,
            )
        return self._sdks[slot]

    async def call(
        self, fn: Callable[[openai.AsyncOpenAI], Awaitable[T]], home: int | None = None
    ) -> tuple[T, tuple[str, int]]:
        """fn(sdk) on the home replica (or another one while it is down); again on another
        replica when the one it ran on was killed under it. Returns fn's result and the
        (replica, incarnation) that answered."""
        for _ in range(20):
            replica = await self._pick(home)
            epoch = replica.epoch
            self._tally.requests += 1
            self._tally.in_flight[replica.name] += 1
            try:
                return await fn(self._sdk(replica)), (replica.name, epoch)
            except Exception as exc:
                if replica.epoch != epoch or not replica.up:
                    self._tally.killed_failures += 1
                    home = None
                    continue
                self._tally.failures.append(f"{replica.name}: {type(exc).__name__}: {exc}")
                raise
            finally:
                self._tally.in_flight[replica.name] -= 1
        raise AssertionError("no replica answered in 20 tries")

    def _sighted(self, run: Any, via: tuple[str, int]) -> None:
        if run.status in TERMINAL:
            self._tally.sightings[run.id].add(via)
            self._tally.threads[run.id] = run.thread_id
            self._tally.sighted_at[run.id] = time.monotonic()
            self._tally.keys[run.id] = self.key
            for hook in self._tally.on_sighting:
                hook(run.id, via)

    # --- one run ---------------------------------------------------------------------------
    async def _assistant(self, plan: str) -> str:
        if plan not in self._assistants:
            metadata, _ = PLANS[plan]
            # An assistant searches files only with the file_search tool, as the API's do.
            tool = "file_search" if metadata.get("file_search_calls", "0") != "0" else None
            tools = [{"type": tool or "code_interpreter"}]
            made, _ = await self.call(
                lambda c: c.beta.assistants.create(model="gpt-4o", tools=tools, metadata=metadata)
            )
            self._assistants[plan] = made.id
        return self._assistants[plan]

    async def run(self, spec: RunSpec) -> str:
        """Drive one run to a terminal status, then poll it `extra_polls` more times; its id."""
        assistant = await self._assistant(spec.plan)
        messages = [{"role": "user", "content": QUESTION}]
        if spec.mode == "forget":
            thread, _ = await self.call(lambda c: c.beta.threads.create(messages=messages))
            self._tally.created_threads.add(thread.id)
            run, via = await self.call(
                lambda c: c.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant),
                spec.home,
            )
            self._tally.plans[run.id] = spec.plan
            self._tally.keys[run.id] = self.key
            self._tally.forgotten[run.id] = (via, time.monotonic())
            self._tally.runs_done += 1
            return run.id
        if spec.mode == "create_and_run":
            run, _ = await self.call(
                lambda c: c.beta.threads.create_and_run(
                    assistant_id=assistant, thread={"messages": messages}
                ),
                spec.home,
            )
            run = await self.poll(run.thread_id, run.id, spec.home)
        else:
            thread, _ = await self.call(lambda c: c.beta.threads.create(messages=messages))
            self._tally.created_threads.add(thread.id)
            if spec.mode == "stream":
                run = await self._streamed(thread.id, assistant, spec.home)
            else:
                run, _ = await self.call(
                    lambda c: c.beta.threads.runs.create(
                        thread_id=thread.id, assistant_id=assistant
                    ),
                    spec.home,
                )
                run = await self.poll(thread.id, run.id, spec.home)
        self._tally.plans[run.id] = spec.plan
        others = [i for i in range(len(self._replicas)) if i != spec.home]
        for i in range(spec.extra_polls):
            where = self._rng.choice(others) if spec.cross and i == 0 else spec.home
            await self.poll(run.thread_id, run.id, where)
        self._tally.runs_done += 1
        return run.id

    async def interrupted_chat(self, home: int, streaming: asyncio.Event) -> None:
        """A chat stream through replica `home` that the upstream keeps open after two chunks
        (`streaming` is set then): in flight when that replica is killed. It is then done again,
        to its end, on another replica."""
        attempts = 0

        async def chat(c: openai.AsyncOpenAI) -> None:
            nonlocal attempts
            attempts += 1
            plan = {"metadata": {"fake_hang_after": "2"}} if attempts == 1 else {}
            stream = await c.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
                **plan,
            )  # fmt: skip
            async for _ in stream:
                streaming.set()

        await self.call(chat, home)

    async def poll(self, thread_id: str, run_id: str, home: int | None) -> Any:
        for _ in range(2000):
            run, via = await self.call(
                lambda c: c.beta.threads.runs.retrieve(run_id, thread_id=thread_id), home
            )
            if run.status in TERMINAL:
                self._sighted(run, via)
                return run
            await asyncio.sleep(self._pace)
        raise AssertionError(f"run {run_id} never finished")

    async def _streamed(self, thread_id: str, assistant: str, home: int) -> Any:
        for _ in range(20):
            replica = await self._pick(home)
            epoch = replica.epoch
            self._tally.requests += 1
            self._tally.in_flight[replica.name] += 1
            try:
                return await self._stream_once(replica, thread_id, assistant, epoch)
            except Exception as exc:
                if replica.epoch == epoch and replica.up:
                    self._tally.failures.append(f"{replica.name}: {type(exc).__name__}: {exc}")
                    raise
                self._tally.killed_failures += 1
            finally:
                self._tally.in_flight[replica.name] -= 1
            # The stream broke with its replica: whatever run it started is in the thread.
            page, _ = await self.call(lambda c: c.beta.threads.runs.list(thread_id=thread_id))
            if page.data:
                return await self.poll(thread_id, page.data[0].id, None)
        raise AssertionError("no stream completed in 20 tries")

    async def _stream_once(
        self, replica: Replica, thread_id: str, assistant: str, epoch: int
    ) -> Any:
        sdk = self._sdk(replica)
        events = await sdk.beta.threads.runs.create(
            thread_id=thread_id, assistant_id=assistant, stream=True
        )
        final = None
        async for event in events:
            data = getattr(event, "data", None)
            if getattr(data, "object", "") == "thread.run" and data.status in TERMINAL:
                final = data
        if final is None:
            raise AssertionError("the stream ended without a terminal run")
        self._sighted(final, (replica.name, epoch))
        return final
