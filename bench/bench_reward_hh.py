"""A reward model on human preferences (Anthropic HH-RLHF, helpful), measured against the two baselines.

    LMFORGE_DATA=../shared/data flock /tmp/lmforge-bench.lock python bench/bench_reward_hh.py --minutes 7

Trains a reward model from scratch (a byte-level BPE trained on the training pairs, a small GPT-2-shaped body
with a scalar head) on hh-rlhf-helpful-online:test + hh-rlhf-helpful-rejection-sampled:test, holding out 10 % of
them to pick the best checkpoint, then scores the best checkpoint on every pair of hh-rlhf-helpful-base:test.
The same script computes the baselines on that test set: chance (50 %) and "the longer response wins"
(characters; a tie counts half). Writes bench/results/reward_hh_<init>_cpu_<minutes>min.json.
Extra KEY=VALUE items override the reward config (e.g. init_from=runs/base/best).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
root = here.parent
sys.path.insert(0, str(root / "src"))
sys.path.insert(0, str(here))

import torch
from machine_info import cpu_flags, cpu_name

TRAIN = "hh-rlhf-helpful-online:test+hh-rlhf-helpful-rejection-sampled:test"
TEST = "hh-rlhf-helpful-base:test"


def length_baseline(spec: str) -> dict:
    from lmforge.data.preferences import load_preferences

    prefs = load_preferences(spec)
    wins = sum(1.0 if len(p.chosen) > len(p.rejected) else 0.5 if len(p.chosen) == len(p.rejected) else 0.0
               for p in prefs.pairs)
    return {"pairs": len(prefs), "longer_wins": wins / len(prefs), "chance": 0.5, "notes": prefs.notes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=7.0, help="the training budget")
    parser.add_argument("--out", default="runs/reward-hh", help="the run folder (replaced)")
    parser.add_argument("items", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    if not os.environ.get("LMFORGE_DATA"):
        raise SystemExit("LMFORGE_DATA is not set to the folder of public data sets (e.g. ../shared/data)")
    import shutil

    from lmforge.align.reward import RewardConfig, evaluate_reward_model, train_reward
    from lmforge.align.reward_model import load_reward_model

    shutil.rmtree(args.out, ignore_errors=True)
    settings = {"out_dir": args.out, "data.train": TRAIN, "data.val": "", "data.val_fraction": 0.1,
                "data.vocab_size": 4096, "model.preset": "tiny-gpt2", "model.d_model": 128, "model.n_head": 4,
                "model.n_layer": 2, "model.dropout": 0.1, "max_length": 320, "max_response_length": 128,
                "batch_size": 16, "max_iters": None, "max_minutes": args.minutes, "eval_interval": 40,
                "learning_rate": 5e-4, "min_lr": 5e-5, "warmup_iters": 30, "weight_decay": 0.01, "device": "cpu",
                "log_interval": 10}
    settings.update(item.split("=", 1) for item in args.items)
    config = RewardConfig.load(overrides=settings)
    load_before = os.getloadavg()
    began = datetime.datetime.now(datetime.timezone.utc)
    result = train_reward(config, quiet=False)
    model, tokenizer = load_reward_model(result.best_dir)
    test = evaluate_reward_model(model, tokenizer, TEST, config.max_length, config.max_response_length)
    baseline = length_baseline(TEST)
    curve = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    init = "scratch" if config.init_from == "scratch" else "pretrained"
    record = {
        "command": "python bench/bench_reward_hh.py " + " ".join(sys.argv[1:]),
        "date": began.isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "flags": cpu_flags(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg(),
                    "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                          cwd=root, check=False).stdout.strip()},
        "train": TRAIN, "test": TEST, "config": config.to_dict(),
        "steps": result.iters, "stopped": result.stopped, "elapsed_s": round(result.elapsed_s, 1),
        "held_out_best_val_accuracy": result.best_value, "best_iter": result.best_iter, "notes": result.notes,
        "test_result": test, "baselines_on_test": baseline,
        "beats_length_baseline": test["accuracy"] > baseline["longer_wins"],
        "curve": [{k: r.get(k) for k in ("iter", "val_accuracy", "val_loss", "val_margin", "train_loss")} for r in curve],
    }
    out = here / "results" / f"reward_hh_{init}_cpu_{args.minutes:g}min.json"
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"test accuracy {test['accuracy']:.4f} on {test['pairs']} pairs of {TEST}; longer-wins "
          f"{baseline['longer_wins']:.4f}, chance 0.5; held-out best {result.best_value:.4f} -> {out}")


if __name__ == "__main__":
    main()
