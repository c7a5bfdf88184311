"""DPO training speed: lmforge's DPO task against TRL's DPOTrainer, same model shape, data and batch, side by side.

    flock /tmp/lmforge-bench.lock python bench/bench_align_speed.py --rounds 3 --steps 12

Both train a random GPT-2-shaped policy (the same weights, saved once) against a frozen copy of it as the
reference (sigmoid loss, beta 0.1, AdamW, float32 on the CPU, no gradient checkpointing) on the same pairs
(random words: a 96-token prompt and two 32-token responses, tokenized by one byte-level BPE), `--batch` pairs
per step. Rounds alternate lmforge and TRL; each run's first step (warm-up) is left out, the others are timed by
step callbacks. Reports the median pairs/s of each system and their ratio, and tokens/s counting every real
token of the pairs (prompt + response, both responses). Writes bench/results/dpo_speed_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

here = Path(__file__).resolve().parent
root = here.parent
sys.path.insert(0, str(root / "src"))
sys.path.insert(0, str(here))

import torch
from machine_info import cpu_flags, cpu_name

WORDS = ("alpha beta gamma delta model token reward policy value prompt answer human assistant summary dialogue "
         "train sample gradient update batch layer").split()


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [{"prompt": text(96), "chosen": " " + text(32), "rejected": " " + text(32)} for _ in range(n)]


def build(folder: Path, pairs: list[dict], n_layer: int, n_embd: int) -> None:
    import transformers as tf

    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.train_bpe([p[k] for p in pairs for k in ("prompt", "chosen", "rejected")], vocab_size=600,
                              special_tokens=("<|endoftext|>",))  # every word one token
    cfg = tf.GPT2Config(n_layer=n_layer, n_head=max(n_embd // 64, 1), n_embd=n_embd, n_positions=512,
                        vocab_size=tok.vocab_size, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.eos_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    tf.GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save(folder)


def run_lmforge(folder: Path, data: Path, steps: int, batch: int, work: Path) -> list[float]:
    from lmforge.align.dpo import train_dpo

    stamps: list[float] = []

    def on_event(event: dict) -> None:
        if event["event"] == "step":
            stamps.append(time.perf_counter())

    settings = {"out_dir": str(work / f"lmforge-{time.time_ns()}"), "init_from": str(folder), "data.train": str(data),
                "data.val": str(data), "reference": "copy", "loss_type": "sigmoid", "beta": 0.1, "batch_size": batch,
                "max_iters": steps, "eval_interval": 10 ** 6, "eval_pairs": 1, "log_interval": 1, "learning_rate": 1e-5,
                "min_lr": 1e-5, "warmup_iters": 0, "device": "cpu", "max_length": 512, "max_response_length": 128}
    train_dpo(settings, quiet=True, callback=on_event)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def run_trl(folder: Path, pairs: list[dict], steps: int, batch: int, work: Path) -> list[float]:
    import transformers as tf
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    stamps: list[float] = []

    class Timer(tf.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    tok = tf.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), eos_token="<|endoftext|>",
                                     pad_token="<|endoftext|>")
    model = tf.GPT2LMHeadModel.from_pretrained(folder)
    ref = tf.GPT2LMHeadModel.from_pretrained(folder)
    args = DPOConfig(output_dir=str(work / f"trl-{time.time_ns()}"), per_device_train_batch_size=batch,
                     max_steps=steps, learning_rate=1e-5, beta=0.1, loss_type="sigmoid", report_to=[], use_cpu=True,
                     bf16=False, fp16=False, save_strategy="no", logging_strategy="no", max_length=None, seed=0,
                     dataloader_num_workers=0, lr_scheduler_type="constant")
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(pairs),
                         processing_class=tok, callbacks=[Timer()])
    trainer.train()
    return [b - a for a, b in zip(stamps, stamps[1:])]


def pair_tokens(folder: Path, pairs: list[dict]) -> float:
    """Real tokens of a pair as lmforge's DPO reads it: [BOS] prompt + response + EOS, for both responses."""
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(folder)
    counts = [2 * (1 + len(tok.encode(p["prompt"]))) + len(tok.encode(p["chosen"])) + len(tok.encode(p["rejected"])) + 2
              for p in pairs]
    return sum(counts) / len(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    args = parser.parse_args()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    pairs = make_pairs(args.batch * args.steps)
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    build(work / "policy", pairs, args.n_layer, args.n_embd)
    per_pair = pair_tokens(work / "policy", pairs)
    times: dict[str, list[float]] = {"lmforge": [], "trl": []}
    for _ in range(args.rounds):
        times["lmforge"] += run_lmforge(work / "policy", data, args.steps, args.batch, work)[1:]
        times["trl"] += run_trl(work / "policy", pairs, args.steps, args.batch, work)[1:]
    medians = {k: statistics.median(v) for k, v in times.items()}
    rates = {k: {"pairs_per_sec": args.batch / m, "tokens_per_sec": args.batch * per_pair / m, "median_step_s": m,
                 "steps_timed": len(times[k])} for k, m in medians.items()}
    ratio = rates["lmforge"]["pairs_per_sec"] / rates["trl"]["pairs_per_sec"]
    import transformers
    import trl

    record = {"command": "python bench/bench_align_speed.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpu": cpu_name(), "flags": cpu_flags(), "cores": os.cpu_count(),
                          "python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "transformers": transformers.__version__,
                          "trl": trl.__version__, "load_average_before": load_before,
                          "load_average_after": os.getloadavg(),
                          "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                                cwd=root, check=False).stdout.strip()},
              "shape": {"n_layer": args.n_layer, "n_embd": args.n_embd, "batch_pairs": args.batch,
                        "tokens_per_pair": per_pair},
              "results": rates, "lmforge_over_trl": ratio, "step_times": times}
    out = here / "results" / "dpo_speed_cpu.json"
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"lmforge {rates['lmforge']['pairs_per_sec']:.2f} pairs/s, TRL {rates['trl']['pairs_per_sec']:.2f} pairs/s: "
          f"{ratio:.2f}x -> {out}")


if __name__ == "__main__":
    main()
