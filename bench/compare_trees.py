"""Two source trees side by side: runs one benchmark script of each tree, alternating, and compares the timings.

Every round runs the script three times as a subprocess, once per arm, in a rotating order: `base` (the base
tree), `head` (the head tree) and `base_again` (the base tree once more: the run-to-run spread, measured in
the same run). Each run imports lmforge from its own tree (PYTHONPATH=<tree>/src) and runs that tree's copy
of the script. Per benchmark row and system it reports the median over all repetitions of all runs of each
arm, head / base and base_again / base, and the same ratios after dividing every run's times by that run's
transformers time (which cancels the load of a shared machine where the script times transformers too).

    python bench/compare_trees.py --base ../base --head . --script bench_generate.py --rounds 3 \\
        --out bench/results/compare_generate.json -- --rows small-greedy,gpt2-greedy --reps 3 --compile

Supported scripts: bench_generate.py, bench_decode_ceiling.py (ms per token), bench_train.py (ms per 1000
training tokens), bench_shakespeare.py (the recipe's wall time, and its training loop's ms per 1000 tokens).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine_info import lscpu_fields  # noqa: E402

ARMS = ("base", "head", "base_again")
REFERENCE = "transformers"


def timings(report: dict) -> dict[tuple[str, str], list[float]]:
    """(row, system) -> milliseconds per step of every repetition, from a report of a supported script."""
    if report["benchmark"] == "generate_speed":
        return {(r["row"], system): [1e3 * s / r["new_tokens"] for s in seconds]
                for r in report["results"] for system, seconds in r["seconds"].items()}
    if report["benchmark"] == "decode_ceiling":
        return {(report["model"], system): values for system, values in report["ms_per_token"].items()}
    if report["benchmark"].startswith("training tokens/s"):  # bench_train.py: ms per 1000 training tokens
        names = {"hf": REFERENCE}
        return {("train-step", names.get(variant, variant)): [1e6 / t for t in values]
                for variant, values in report["tokens_per_sec_all"].items()}
    if report["benchmark"].startswith("shakespeare-char-cpu recipe"):  # bench_shakespeare.py: the whole run
        return {("recipe", "wall"): [1e3 * report["wall_s"]],
                ("recipe", "train-loop"): [1e6 / report["train_loop_tokens_per_sec"]]}
    raise SystemExit(f"compare_trees does not know the benchmark {report['benchmark']!r}")


def busy_processes(limit: int = 5) -> list[str]:
    """The processes using the most CPU right now (`ps`), for the record of what else was running."""
    out = subprocess.run(["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    return [line.strip()[:160] for line in out.splitlines()[1:limit + 1]]


def run_arm(tree: Path, script: str, args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        env = dict(os.environ, PYTHONPATH=str(tree / "src"))
        subprocess.run([sys.executable, str(tree / "bench" / script), *args, "--out", str(out)], env=env, check=True,
                       cwd=tree)
        return json.loads(out.read_text())


def commit_of(tree: Path) -> str:
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=tree).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=tree).stdout.strip()
    return head + (" (with uncommitted changes)" if dirty else "")


def summarize(runs: dict[str, list[dict]]) -> list[dict]:
    rows = []
    per_arm = {arm: [timings(report) for report in reports] for arm, reports in runs.items()}
    for key in per_arm["base"][0]:
        row, system = key
        entry = {"row": row, "system": system}
        for arm, tables in per_arm.items():
            entry[f"{arm}_ms"] = statistics.median(v for table in tables for v in table[key])
            if system != REFERENCE and (row, REFERENCE) in tables[0]:
                entry[f"{arm}_vs_{REFERENCE}"] = statistics.median(
                    statistics.median(table[key]) / statistics.median(table[(row, REFERENCE)]) for table in tables)
        entry["head_over_base"] = entry["head_ms"] / entry["base_ms"]
        entry["spread_base_again_over_base"] = entry["base_again_ms"] / entry["base_ms"]
        if f"base_vs_{REFERENCE}" in entry:
            entry["head_over_base_normalized"] = entry[f"head_vs_{REFERENCE}"] / entry[f"base_vs_{REFERENCE}"]
            entry["spread_normalized"] = entry[f"base_again_vs_{REFERENCE}"] / entry[f"base_vs_{REFERENCE}"]
        rows.append(entry)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'row':14s} {'system':18s} {'base ms':>9s} {'head ms':>9s} {'again ms':>9s} {'head/base':>10s} "
          f"{'again/base':>10s} {'norm h/b':>9s} {'norm a/b':>9s}")
    for r in rows:
        norm = (f"{r['head_over_base_normalized']:9.3f} {r['spread_normalized']:9.3f}"
                if "head_over_base_normalized" in r else "")
        print(f"{r['row']:14s} {r['system']:18s} {r['base_ms']:9.2f} {r['head_ms']:9.2f} {r['base_again_ms']:9.2f} "
              f"{r['head_over_base']:10.3f} {r['spread_base_again_over_base']:10.3f} {norm}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, type=Path, help="the reference tree")
    parser.add_argument("--head", required=True, type=Path, help="the tree under test")
    parser.add_argument("--script", required=True, help="a script of bench/, e.g. bench_generate.py")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each arm")
    parser.add_argument("--out", required=True)
    parser.add_argument("args", nargs=argparse.REMAINDER, help="after --: the script's own arguments")
    args = parser.parse_args()
    script_args = args.args[1:] if args.args[:1] == ["--"] else args.args
    trees = {"base": args.base.resolve(), "head": args.head.resolve(), "base_again": args.base.resolve()}
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    log = []
    started = datetime.datetime.now(datetime.timezone.utc)
    for round_ in range(args.rounds):
        order = ARMS[round_ % 3:] + ARMS[:round_ % 3]
        for arm in order:
            entry = {"round": round_, "arm": arm, "load_average": os.getloadavg(), "busy": busy_processes(),
                     "start": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            print(f"round {round_ + 1}/{args.rounds}: {arm}", flush=True)
            runs[arm].append(run_arm(trees[arm], args.script, script_args))
            log.append(entry)
    rows = summarize(runs)
    print_table(rows)
    fields = lscpu_fields()
    report = {
        "benchmark": "compare_trees", "script": args.script, "script_args": script_args, "rounds": args.rounds,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "date": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "trees": {arm: {"path": str(trees[arm]), "commit": commit_of(trees[arm])} for arm in ("base", "head")},
        "machine": {k: fields.get(k) for k in ("Model name", "CPU(s)", "Thread(s) per core", "L2 cache", "L3 cache")},
        "cpu_flags": fields.get("Flags", "").split(),
        "torch": torch.__version__,
        "runs": log,
        "rows": rows,
        "reports": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".tmp").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".tmp").replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
