"""The scaling-law lab's benchmark: run configs/scaling-cpu.yaml (or, with --reduced, a smaller grid that fits
in about 10 minutes) and record the fits, the prediction and its error beside the machine's facts.

    flock /tmp/lmforge-bench.lock .venv/bin/python bench/bench_scaling.py --reduced \
        --out bench/results/scaling_reduced.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from machine_info import cpu_flags, cpu_name

from lmforge.scale.lab import run_lab
from lmforge.scale.sweep import load_lab_config

# The reduced grid: 5 sizes × 3 budgets spanning 10× (with the recipe's corpus and training settings), the
# check at 4 × the largest budget.
REDUCED = {"sizes": [{"n_layer": 1, "n_embd": 32, "n_head": 2}, {"n_layer": 2, "n_embd": 32, "n_head": 2},
                     {"n_layer": 2, "n_embd": 48, "n_head": 3}, {"n_layer": 2, "n_embd": 64, "n_head": 4},
                     {"n_layer": 3, "n_embd": 64, "n_head": 4}],
           "budgets": [1e10, 3e10, 1e11]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/scaling-cpu.yaml")
    parser.add_argument("--reduced", action="store_true", help="the ~10-minute grid instead of the full recipe")
    parser.add_argument("--out-dir", help="the lab's folder (default: the config's, with -reduced for --reduced)")
    parser.add_argument("--out", required=True, help="the JSON result")
    args = parser.parse_args()
    overrides = dict(REDUCED) if args.reduced else {}
    lab = load_lab_config(args.config, overrides)
    lab.out_dir = args.out_dir or (lab.out_dir + "-reduced" if args.reduced else lab.out_dir)
    load_before = os.getloadavg()
    began = time.perf_counter()
    result = run_lab(lab, check=True)
    seconds = time.perf_counter() - began
    fits = result.fits
    out = {
        "grid": "reduced" if args.reduced else "full",
        "config": args.config, "overrides": overrides, "out_dir": lab.out_dir,
        "seconds": round(seconds, 1),
        "runs": [{k: r.to_dict()[k] for k in ("name", "parameters", "budget", "tokens", "compute", "epochs",
                                              "val_loss", "status", "elapsed_s")} for r in result.records],
        "prediction": result.prediction,
        "check": result.check.to_dict() if result.check else None,
        "exponents": {
            "isoflop_a": fits.isoflop.a if fits else None, "isoflop_b": fits.isoflop.b if fits else None,
            "parametric": {k: getattr(fits.parametric, k) for k in ("E", "A", "B", "alpha", "beta", "a", "b")}
            if fits and fits.parametric else None,
            "frontier_a": fits.frontier.a if fits and fits.frontier else None,
            "intervals": fits.intervals if fits else {},
        },
        "data": result.data,
        "notes": result.notes,
        "machine": {"cpu": cpu_name(), "flags": cpu_flags(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "load_before": load_before, "load_after": os.getloadavg(),
                    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("seconds", "prediction", "exponents")}, indent=2))


if __name__ == "__main__":
    main()
