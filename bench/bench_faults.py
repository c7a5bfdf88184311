"""The long fault profiles of tests/faults/, with their figures: the command-line fuzzer (LMFORGE_FUZZ_CASES cases
per verb), SIGKILL at every crash point and ENOSPC at every write point, each resumed bit for bit.

    flock /tmp/lmforge-bench.lock python bench/bench_faults.py --cases 150

writes results/faults_long.json (cases per verb and outcome, crash and ENOSPC points, pass/fail, durations,
machine, load) for docs/reliability.md."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import cpu_flags, cpu_name

ROOT = Path(__file__).resolve().parent.parent


def pytest(args: list[str], env: dict) -> dict:
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, check=False)
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|error|errors|deselected)", summary)}
    failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
    return {"command": "pytest -q " + " ".join(args), "seconds": round(time.perf_counter() - began, 1),
            "summary": summary, "counts": counts, "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=150, help="fuzz cases per verb (a fifth for train, finetune, demo)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "faults_long.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    tally = Path(tempfile.mkdtemp()) / "tally.json"
    fuzz = pytest(["tests/faults/test_fuzz.py", "-m", "slow"],
                  {"LMFORGE_FUZZ_CASES": str(args.cases), "LMFORGE_FUZZ_REPORT": str(tally)})
    fuzz["cases_by_verb"] = json.loads(tally.read_text()) if tally.is_file() else {}
    crash = pytest(["tests/faults/test_crash.py", "-m", "slow or not slow"], {})
    enospc = pytest(["tests/faults/test_enospc.py", "-m", "slow or not slow"], {})
    sys.path.insert(0, str(ROOT / "tests" / "faults"))
    from test_crash import POINTS as CRASH_POINTS
    from test_enospc import POINTS as ENOSPC_POINTS

    crash["points"] = [p.values[0] for p in CRASH_POINTS]
    enospc["points"] = list(ENOSPC_POINTS)
    import torch

    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "flags": cpu_flags(),
                          "python": platform.python_version(), "torch": torch.__version__},
              "load_average_before": load_before, "fuzz": fuzz, "crash": crash, "enospc": enospc,
              "load_average_after": os.getloadavg()}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("date", "load_average_before", "load_average_after")}))
    for name in ("fuzz", "crash", "enospc"):
        print(name, report[name]["summary"], f"{report[name]['seconds']} s")


if __name__ == "__main__":
    main()
