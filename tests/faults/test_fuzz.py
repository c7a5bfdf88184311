"""The command line under a fuzzer (tests/faults/fuzz_cli.py): for every verb, random flags and values, random YAML
configs and corrupt input files; every case exits 0 or 2 with one sentence, never a traceback, never leaving
anything half-written.

The default suite runs a small fixed-seed profile; `-m slow` runs the long one (LMFORGE_FUZZ_CASES cases per verb,
default 300) and writes its tally to $LMFORGE_FUZZ_REPORT when set."""

from __future__ import annotations

import json
import os

import pytest
from fuzz_cli import ALL_VERBS, Pool, Tally, clean, draw_argv, run_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DEFAULT_CASES = {"train": 2, "finetune": 2, "demo": 1,  # the slow verbs; the others get 5
                 "reward": 2, "dpo": 2, "ppo": 2, "scale": 1}
SECONDS = {"serve": 5}  # a junk --host waits for the resolver (no network here) until the deadline
TALLY = Tally()


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Pool:
    return Pool(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(autouse=True)
def no_server(monkeypatch):
    """`serve` that would listen forever returns once it is ready (closing its socket)."""
    import uvicorn

    def run(self, sockets=None):
        for sock in sockets or []:
            sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)  # it would close pytest's streams


def fuzz(verb: str, pool: Pool, cases: int, seconds: float) -> None:
    @settings(max_examples=cases, derandomize=True, database=None, deadline=None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def case(data):
        argv = draw_argv(verb, pool, data.draw)
        workdir = pool.root / "work"
        try:
            outcome = run_case([verb, *argv], workdir, pool, seconds)
        finally:
            clean(workdir, pool)
        TALLY.add(verb, outcome)
        if os.environ.get("LMFORGE_FUZZ_ECHO"):
            print(f"{outcome.status} lmforge {' '.join(outcome.argv)}\n    {outcome.stderr.strip()[-300:]}")
        if outcome.problems:
            raise AssertionError(f"lmforge {' '.join(outcome.argv)}: {'; '.join(outcome.problems)}\n"
                                 f"stderr: {outcome.stderr[-2000:]}")

    case()


@pytest.mark.parametrize("verb", ALL_VERBS)
def test_fuzz_every_verb(verb, pool):
    fuzz(verb, pool, DEFAULT_CASES.get(verb, 5), seconds=SECONDS.get(verb, 20))


@pytest.mark.slow
@pytest.mark.parametrize("verb", ALL_VERBS)
def test_fuzz_every_verb_long(verb, pool):
    cases = int(os.environ.get("LMFORGE_FUZZ_CASES", "300"))
    try:
        fuzz(verb, pool, cases if verb not in DEFAULT_CASES else max(cases // 5, 1), seconds=SECONDS.get(verb, 30))
    finally:  # the tally so far (a failing verb's cases include hypothesis's replays while it shrinks the failure)
        report = os.environ.get("LMFORGE_FUZZ_REPORT")
        if report:
            with open(report, "w", encoding="utf-8") as f:
                json.dump(TALLY.table(), f, indent=2)
