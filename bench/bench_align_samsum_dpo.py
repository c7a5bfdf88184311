"""DPO again on bench_align_samsum.py's rankings with another learning rate, scored the same way (validation ROUGE
with beam 4 and the KL to SFT), after that script has run (it reuses runs/align-samsum/{sft,rankings*}).

    LMFORGE_DATA=../shared/data python bench/bench_align_samsum_dpo.py --lr 1e-4 --minutes 8

Writes bench/results/align_samsum_cpu_dpo_lr<lr>.json.
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parent / "src"))
sys.path.insert(0, str(here))

import bench_align_samsum as samsum  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--minutes", type=float, default=8)
    parser.add_argument("--val-examples", type=int, default=200)
    parser.add_argument("--work", default="runs/align-samsum")
    args = parser.parse_args()
    from lmforge.align import train_dpo
    from lmforge.data.pairs import load_pairs
    from lmforge.hub.hf import load_folder

    work, began = args.work, time.time()
    out_dir = f"{work}/dpo-lr{args.lr:g}"
    shutil.rmtree(out_dir, ignore_errors=True)
    dpo = train_dpo({"max_length": 320, "max_response_length": 80, "batch_size": 8, "max_iters": None,
                     "max_minutes": args.minutes, "device": "cpu", "out_dir": out_dir, "init_from": f"{work}/sft/best",
                     "data.train": f"{work}/rankings.jsonl", "data.val": f"{work}/rankings-held-out.jsonl",
                     "learning_rate": args.lr, "beta": 0.1, "eval_interval": 100}, quiet=True)
    sft_model, tokenizer = load_folder(f"{work}/sft/best")
    val = load_pairs("samsum:validation").head(args.val_examples)
    prompts = val.prompts(samsum.TEMPLATE)
    policy = load_folder(dpo.best_dir).model
    record = {"command": "python bench/bench_align_samsum_dpo.py " + " ".join(sys.argv[1:]), "steps": dpo.iters,
              "best_iter": dpo.best_iter, "held_out_implicit_accuracy": dpo.best_value,
              "rouge": samsum.rouge_of(policy, tokenizer, prompts, val.targets),
              "kl_to_sft": samsum.kl_to_sft(policy, sft_model, tokenizer, prompts, 3),
              "elapsed_s": round(time.time() - began, 1), "load_average": os.getloadavg()}
    (here / "results" / f"align_samsum_cpu_dpo_lr{args.lr:g}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
