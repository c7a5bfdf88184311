"""Seq2seq from scratch on real data: SAMSum summarization (ROUGE) or Multi30k en->de translation (BLEU).

    LMFORGE_DATA=../shared/data python bench/bench_seq2seq.py --task samsum --minutes 10 --device cpu

Trains the recipe of configs/samsum-cpu.yaml or configs/multi30k-cpu.yaml for a wall-clock budget
(the learning-rate schedule is planned on that budget), takes the checkpoint with the best validation
loss, decodes the whole validation split with beam search (4 beams) and scores it. On CUDA it trains in
bfloat16 autocast with 8x larger batches. Writes bench/results/seq2seq_<task>_<device>_<minutes>min.json
(command, machine, torch version, date, training curve, metrics, sample outputs) and the loss curve
as a PNG beside it. Without LMFORGE_DATA it says so and exits 0 (nothing to measure).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

here = Path(__file__).resolve().parent
root = here.parent
sys.path.insert(0, str(root / "src"))

import lmforge
from lmforge.data.pairs import load_pairs
from lmforge.evaluate.run import evaluate_pairs, write_reports
from lmforge.train import FinetuneConfig, finetune

sys.path.insert(0, str(Path(__file__).parent))
from machine_info import cpu_name  # noqa: E402

TASKS = {
    "samsum": {"config": "configs/samsum-cpu.yaml", "metrics": ["rouge", "length", "novelty"],
               "anchors": {"lead3": {"rouge1": 31.5, "rouge2": 8.8},
                           "bart_large_finetuned": {"rouge1": "about 48-52"}},
               "target": {"rouge1": 33.0, "rouge2": 10.0}},
    "multi30k": {"config": "configs/multi30k-cpu.yaml", "metrics": ["bleu", "chrf", "length"],
                 "anchors": {"transformer_from_scratch_gpu_test2016": {"bleu": "about 31-33"}},
                 "target": {"bleu": 25.0}},
}


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = cpu_name() or "unknown CPU"
    return f"{name}, {os.cpu_count()} logical CPUs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=[*sorted(TASKS), "all"], default="all")
    parser.add_argument("--minutes", type=float, default=10, help="training wall-clock budget (default 10)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--eval-limit", type=int, help="score only the first N validation examples (default: all)")
    parser.add_argument("--runs", default="runs/bench", help="folder for the run folders")
    parser.add_argument("--results", default=str(here / "results"), help="folder for the results JSON and PNG")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, key=value")
    args = parser.parse_args()
    if not os.environ.get("LMFORGE_DATA"):
        print("LMFORGE_DATA is not set (e.g. LMFORGE_DATA=../shared/data); nothing to measure")
        return 0
    for task in sorted(TASKS) if args.task == "all" else [args.task]:
        bench(task, args)
    return 0


def bench(task_name: str, args: argparse.Namespace) -> None:
    task = TASKS[task_name]
    minutes = f"{args.minutes:g}"
    name = f"seq2seq_{task_name}_{args.device.split(':')[0]}_{minutes}min"
    run_dir = Path(args.runs) / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    overrides = {"out_dir": str(run_dir), "max_minutes": args.minutes, "max_iters": None, "device": args.device}
    if args.device.startswith("cuda"):
        overrides.update(dtype="bfloat16", batch_tokens=8 * 3072, max_batch_size=512, gen_batch_size=256,
                         eval_examples=0, gen_examples=200)
    for item in args.overrides:
        key, _, value = item.partition("=")
        overrides[key] = value
    config = FinetuneConfig.load(root / task["config"], overrides)
    argv = " ".join(sys.argv[1:]) if args.task != "all" else f"--task {task_name} --minutes {minutes} --device {args.device}"
    command = f"LMFORGE_DATA={os.environ['LMFORGE_DATA']} python bench/bench_seq2seq.py {argv}"
    print(f"== {command}", flush=True)

    began = time.perf_counter()
    result = finetune(config)
    train_wall = time.perf_counter() - began

    ckpt = lmforge.load(result.best_dir, device=args.device)
    val = load_pairs(f"{task_name}:validation").head(args.eval_limit)
    began = time.perf_counter()
    report = evaluate_pairs(ckpt, val, task["metrics"], {"num_beams": 4},
                            templates={"default": config.data.template}, prefix=config.data.prefix,
                            max_source_length=config.data.max_source_length, too_long="truncate",
                            batch_size=config.gen_batch_size, log=lambda text: print(text, flush=True))
    eval_seconds = time.perf_counter() - began
    write_reports(report, run_dir / "eval")

    run = report.runs[0]
    metrics_log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    results = {
        "benchmark": "seq2seq from scratch", "task": task_name, "command": command,
        "machine": machine(args.device), "device": args.device, "threads": torch.get_num_threads(),
        "shared_machine_note": ("CPU shared with other engineers' jobs during the run; timings are not "
                                "those of an idle machine") if args.device == "cpu" else None,
        "torch": torch.__version__, "python": platform.python_version(), "lmforge": lmforge.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "budget_minutes": args.minutes,
        "training": {"steps": result.iters, "stopped": result.stopped, "loop_seconds": round(result.elapsed_s, 1),
                     "wall_seconds_with_setup": round(train_wall, 1),
                     "tokens_per_sec": round(result.tokens_per_sec, 1),
                     "epochs_started": metrics_log[-1].get("epoch"),
                     "best_checkpoint": {"by": result.best_metric, "value": result.best_value,
                                         "iter": result.best_iter},
                     "notes": result.notes},
        "curve": [{k: r.get(k) for k in ("iter", "epoch", "train_loss", "val_loss", "source_gain", "lr", "elapsed_s")}
                  for r in metrics_log],
        "evaluation": {"split": "validation", "examples": len(run.outputs), "decoding": report.generation,
                       "seconds": round(eval_seconds, 1), "metrics": {k: round(v, 2) for k, v in run.scores.items()},
                       "signatures": report.signatures, "notes": report.notes,
                       "rouge_note": report.summary()["rouge_note"]},
        "anchors": task["anchors"], "target": task["target"],
        "config": config.to_dict(),
        "samples": [{"id": i, "output": o, "reference": r}
                    for i, o, r in list(zip(run.ids, run.outputs, run.references))[:5]],
    }
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if (run_dir / "loss.png").is_file():
        shutil.copyfile(run_dir / "loss.png", out / f"{name}.png")
    shown = ", ".join(f"{k} {v:.2f}" for k, v in run.scores.items())
    print(f"{task_name} on {results['machine']}: {result.iters} steps in {args.minutes:g} min -> {shown}")
    print(f"wrote {out / (name + '.json')}")


if __name__ == "__main__":
    sys.exit(main())
