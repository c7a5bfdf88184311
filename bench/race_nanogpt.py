"""Time to quality against nanoGPT: its shakespeare_char CPU recipe against lmforge's, side by side.

nanoGPT's `train.py` runs with `config/train_shakespeare_char.py` and the CPU settings of nanoGPT's README
(4 layers x 4 heads x 128, context 64, batch 12, 2000 iterations, no dropout, float32, no compile), from a
nanoGPT checkout given by --nanogpt or $NANOGPT (nanoGPT's code is run where it is, never copied into this
project; its own `data/shakespeare_char/prepare.py` reads the same Tiny Shakespeare file as lmforge, from
$LMFORGE_DATA). lmforge runs `lmforge train --config configs/shakespeare-char-cpu.yaml`, evaluating every 50
iterations for this measurement (no samples). Both data sets are prepared before the clock starts.

The runs alternate (nanoGPT first in even rounds, lmforge first in odd ones). Every evaluation line each
program prints is timestamped as it arrives, so both sides are timed the same way, from process start:
nanoGPT's final validation loss and wall time, lmforge's final validation loss and wall time, and the time
at which lmforge first reports a validation loss at or below that round's nanoGPT final loss (also without the
time its evaluations took until then, which nanoGPT, evaluating every 250 iterations, mostly does not spend).

    python bench/race_nanogpt.py --nanogpt ~/src/nanoGPT [--runs 3] [--out bench/results/race_nanogpt.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from machine_info import cpu_flags, cpu_name  # noqa: E402

NANOGPT_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0", "--dtype=float32"]
NANOGPT_EVAL = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
LMFORGE_EVAL = re.compile(r"^eval iter (\d+): train loss ([\d.]+), val loss ([\d.]+)")
# nanoGPT's prepare.py imports requests only to download the file, which is already there
PREPARE = "import sys, types, runpy; sys.modules['requests'] = types.ModuleType('requests'); runpy.run_path(sys.argv[1])"


def timed_evals(cmd: list[str], cwd: Path, pattern: re.Pattern, env: dict) -> dict:
    """Run `cmd`, timestamping every evaluation line (iter, train loss, val loss) from process start."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    evals, tail = [], []
    for line in proc.stdout:
        match = pattern.match(line.strip())
        if match:
            evals.append({"iter": int(match[1]), "train_loss": float(match[2]), "val_loss": float(match[3]),
                          "t_s": round(time.perf_counter() - start, 2)})
        tail = (tail + [line])[-20:]
    if proc.wait() != 0 or not evals:
        sys.exit(f"{' '.join(cmd[:3])} failed:\n{''.join(tail)}")
    return {"wall_s": round(time.perf_counter() - start, 2), "final_val_loss": evals[-1]["val_loss"], "evals": evals}


def prepare_nanogpt(checkout: Path, work: Path, text: Path, python: str) -> Path:
    """A working folder that runs the checkout's own files, with the data prepared from `text`."""
    for name in ("train.py", "model.py", "configurator.py", "config"):
        (work / name).symlink_to(checkout / name)
    data = work / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    (data / "prepare.py").symlink_to(checkout / "data" / "shakespeare_char" / "prepare.py")
    (data / "input.txt").symlink_to(text)
    subprocess.run([python, "-c", PREPARE, str(data / "prepare.py")], check=True, capture_output=True)
    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", default=os.environ.get("NANOGPT"), help="a nanoGPT checkout (or $NANOGPT)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--first-round", type=int, default=0,
                        help="number of the first round (an odd one starts with lmforge: to continue an earlier run)")
    parser.add_argument("--eval-interval", type=int, default=50)
    parser.add_argument("--out", default="bench/results/race_nanogpt.json")
    parser.add_argument("--note", default="", help="what else was running, for the record")
    args = parser.parse_args()
    if not args.nanogpt or not (Path(args.nanogpt) / "train.py").is_file():
        sys.exit("no nanoGPT checkout given: pass --nanogpt PATH or set NANOGPT to a clone of "
                 "https://github.com/karpathy/nanoGPT (the race runs its train.py as it is)")
    data_root = os.environ.get("LMFORGE_DATA")
    text = Path(data_root or "") / "tinyshakespeare" / "input.txt"
    if not data_root or not text.is_file():
        sys.exit("set LMFORGE_DATA to the folder of public data sets (it holds tinyshakespeare/input.txt)")
    python = sys.executable
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="race-") as tmp:
        tmp = Path(tmp)
        (tmp / "nanogpt").mkdir()
        nano_work = prepare_nanogpt(Path(args.nanogpt).resolve(), tmp / "nanogpt", text.resolve(), python)
        prepared = tmp / "shakespeare-char"
        subprocess.run([python, "-m", "lmforge.cli.main", "prepare", str(text), "--out", str(prepared)], check=True,
                       capture_output=True, env=env)
        rounds = []
        for i in range(args.first_round, args.first_round + args.runs):
            nano_cmd = [python, "train.py", *NANOGPT_ARGS, f"--out_dir={tmp / f'nano-out-{i}'}"]
            ours_cmd = [python, "-m", "lmforge.cli.main", "train", "--config", str(ROOT / "configs/shakespeare-char-cpu.yaml"),
                        "--data.source", str(prepared), "--out_dir", str(tmp / f"ours-{i}"), "--eval_interval",
                        str(args.eval_interval), "--sample_tokens", "0"]
            order = ["nanogpt", "lmforge"] if i % 2 == 0 else ["lmforge", "nanogpt"]
            result = {}
            for side in order:
                if side == "nanogpt":
                    result[side] = timed_evals(nano_cmd, nano_work, NANOGPT_EVAL, env)
                else:
                    result[side] = timed_evals(ours_cmd, ROOT, LMFORGE_EVAL, env)
                print(f"round {i} {side}: final val {result[side]['final_val_loss']:.4f} in {result[side]['wall_s']:.1f} s",
                      flush=True)
            target = result["nanogpt"]["final_val_loss"]
            reached = next((e for e in result["lmforge"]["evals"] if e["val_loss"] <= target), None)
            if reached:  # the share of that time the evaluations every eval_interval took (metrics.jsonl)
                records = [json.loads(line) for line in (tmp / f"ours-{i}" / "metrics.jsonl").read_text().splitlines()]
                reached["eval_s_so_far"] = round(sum(r["eval_s"] for r in records if r["iter"] <= reached["iter"]), 2)
            result["lmforge_reaches_nanogpt_final"] = reached
            result["time_to_nanogpt_final_ratio"] = (round(reached["t_s"] / result["nanogpt"]["wall_s"], 3)
                                                     if reached else None)
            rounds.append(result)
            when = f"iter {reached['iter']}, {reached['t_s']:.1f} s" if reached else "never"
            print(f"round {i}: lmforge reaches {target:.4f} at {when}: {result['time_to_nanogpt_final_ratio']}x "
                  "nanoGPT's wall time", flush=True)

    def median(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 4) if values else None

    summary = {
        "nanogpt_final_val_loss": median(r["nanogpt"]["final_val_loss"] for r in rounds),
        "nanogpt_wall_s": median(r["nanogpt"]["wall_s"] for r in rounds),
        "lmforge_final_val_loss": median(r["lmforge"]["final_val_loss"] for r in rounds),
        "lmforge_wall_s": median(r["lmforge"]["wall_s"] for r in rounds),
        "lmforge_time_to_nanogpt_final_s": median((r["lmforge_reaches_nanogpt_final"] or {}).get("t_s") for r in rounds),
        "time_to_nanogpt_final_ratio": median(r["time_to_nanogpt_final_ratio"] for r in rounds),
        "time_to_nanogpt_final_ratio_without_evaluations": median(
            (r["lmforge_reaches_nanogpt_final"]["t_s"] - r["lmforge_reaches_nanogpt_final"]["eval_s_so_far"])
            / r["nanogpt"]["wall_s"] for r in rounds if r["lmforge_reaches_nanogpt_final"]),
        "wall_ratio": median(r["lmforge"]["wall_s"] / r["nanogpt"]["wall_s"] for r in rounds),
    }
    summary["target_met"] = bool(summary["time_to_nanogpt_final_ratio"] is not None
                                 and summary["time_to_nanogpt_final_ratio"] <= 0.5
                                 and summary["lmforge_final_val_loss"] < summary["nanogpt_final_val_loss"])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(args.nanogpt), capture_output=True,
                            text=True).stdout.strip()
    out = {"benchmark": "time to quality: nanoGPT shakespeare_char (CPU settings) vs lmforge shakespeare-char-cpu",
           "target": "lmforge reaches nanoGPT's final val loss in <= 0.5x nanoGPT's wall time, and ends lower",
           "summary": summary, "rounds": rounds, "nanogpt_commit": commit, "nanogpt_args": NANOGPT_ARGS,
           "lmforge_eval_interval": args.eval_interval, "note": args.note,
           "machine": {"cpu": cpu_name(), "flags": cpu_flags(), "threads": "torch default (2)"},
           "torch": __import__("torch").__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
