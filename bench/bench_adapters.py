"""Adapters on real data: pretrain a decoder-only base, then adapt it to SAMSum with each method.

    LMFORGE_DATA=../shared/data flock /tmp/lmforge-bench.lock python bench/bench_adapters.py pretrain
    LMFORGE_DATA=../shared/data flock /tmp/lmforge-bench.lock python bench/bench_adapters.py adapt --minutes 10
    flock /tmp/lmforge-bench.lock python bench/bench_adapters.py speed
    LMFORGE_DATA=../shared/data python bench/bench_adapters.py      # all three, with their defaults

`pretrain` writes the corpus (the docstrings of Python's standard library, tinyshakespeare, the English side
of Multi30k's train split, the dialogues of SAMSum's train split: text lmforge reads offline) and trains the
base of configs/adapt-base-cpu.yaml on it (60 minutes). `adapt` fine-tunes that base on SAMSum as
prompt -> completion (`Dialogue: ...\\nSummary:` -> the summary) for the same wall-clock budget with each
method: full fine-tuning, LoRA r 8 and r 16 on q_proj,v_proj, LoRA r 4 and r 16 on every linear layer, prefix
tuning, prompt tuning (`--methods` picks some; a rerun keeps the other methods' rows of the same budget); it
records the validation loss (and the base's, before any training), ROUGE-1/2/L on validation dialogues,
trainable parameters, the peak
resident memory of each training process and its training tokens/s, in bench/results/adapters_samsum_cpu.json.
Each method trains in its own process, one after the other, so that peak memory is its own. `speed` times LoRA
training steps of the base's shape (random weights) in lmforge, eager and compiled, and in transformers + PEFT,
alternating in one process: bench/results/adapters_lora_speed.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
root = here.parent
sys.path.insert(0, str(root / "src"))
sys.path.insert(0, str(here))

import torch
from machine_info import cpu_flags, cpu_name

RUNS = Path("runs/adapt-bench")
CORPUS = RUNS / "corpus.txt"
DATA = RUNS / "data"  # the corpus tokenized (a byte-level BPE of 4,096 tokens trained on it)
BASE_CONFIG = root / "configs" / "adapt-base-cpu.yaml"


def data_root() -> Path:
    path = os.environ.get("LMFORGE_DATA")
    if not path or not Path(path).is_dir():
        raise SystemExit("LMFORGE_DATA is not set to the folder of public data sets (e.g. ../shared/data)")
    return Path(path)


def write_corpus(data: Path) -> dict:
    """The pretraining text, one document per paragraph; what went in, in characters."""
    from lmforge.data.stdlib_corpus import build_stdlib_corpus

    RUNS.mkdir(parents=True, exist_ok=True)
    stdlib = RUNS / "stdlib.txt"
    build_stdlib_corpus(stdlib)
    parts = {
        "python stdlib docstrings": stdlib.read_text(encoding="utf-8"),
        "tinyshakespeare": (data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8"),
        "multi30k train.en": (data / "multi30k" / "train.en").read_text(encoding="utf-8"),
        "samsum train dialogues": "\n\n".join(
            json.loads(line)["dialogue"].replace("\r\n", "\n")
            for line in (data / "samsum" / "train.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()),
    }
    CORPUS.write_text("\n\n".join(parts.values()) + "\n", encoding="utf-8")
    return {name: len(text) for name, text in parts.items()}


def pretrain(args: argparse.Namespace) -> None:
    from lmforge.data.prepare import prepare
    from lmforge.train import TrainConfig, train

    sizes = write_corpus(data_root())
    print(f"corpus {CORPUS}: {sizes}", flush=True)
    prepare(CORPUS, DATA, tokenizer="bpe", vocab_size=4096, val_fraction=0.02, log=print)
    overrides = {"max_minutes": args.minutes} if args.minutes else {}
    result = train(TrainConfig.load(BASE_CONFIG, overrides))
    record = {"command": " ".join(sys.argv), "date": datetime.datetime.now().isoformat(timespec="minutes"),
              "machine": machine(), "torch": torch.__version__, "corpus_chars": sizes,
              "config": str(BASE_CONFIG.relative_to(root)), "iters": result.iters,
              "best_val_loss": result.best_value, "minutes": result.elapsed_s / 60,
              "tokens_per_sec": result.tokens_per_sec}
    (RUNS / "base.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


# ---- adapt: each method for the same budget ------------------------------------------------------------

TEMPLATE = "Dialogue: {dialogue}\nSummary:"
METHODS = {  # name -> (config overrides, learning rate)
    "full": ({}, 3e-4),
    "lora-r8": ({"adapter.method": "lora", "adapter.r": 8, "adapter.alpha": 16}, 2e-3),
    "lora-r16": ({"adapter.method": "lora", "adapter.r": 16, "adapter.alpha": 32}, 2e-3),
    "lora-all-r4": ({"adapter.method": "lora", "adapter.r": 4, "adapter.alpha": 8, "adapter.targets": "all-linear"},
                    2e-3),
    "lora-all-r16": ({"adapter.method": "lora", "adapter.r": 16, "adapter.alpha": 32, "adapter.targets": "all-linear"},
                     2e-3),
    "prefix": ({"adapter.method": "prefix", "adapter.num_virtual_tokens": 16, "adapter.init": "text",
                "adapter.init_text": "Summarize the dialogue in one or two sentences."}, 3e-3),
    "prompt": ({"adapter.method": "prompt", "adapter.num_virtual_tokens": 16, "adapter.init": "text",
                "adapter.init_text": "Summarize the dialogue in one or two sentences."}, 3e-2),
}


def adapt_config(method: str, minutes: float, gen_examples: int) -> dict:
    overrides, lr = METHODS[method]
    # prefix and prompt tuning's virtual tokens take part of the 384-token context: their dialogues are cut at
    # 320 - 16 tokens (longer ones are dropped, as for the other methods at 320)
    virtual = overrides.get("adapter.num_virtual_tokens", 0)
    return {"out_dir": str(RUNS / f"samsum-{method}"), "init_from": str(RUNS / "base" / "best"),
            "data.train": "samsum:train", "data.val": "samsum:validation", "data.template": TEMPLATE,
            "data.max_source_length": 320 - virtual, "data.max_target_length": 64, "data.too_long": "drop",
            "model.dropout": 0.0, "max_iters": None, "max_minutes": minutes, "learning_rate": lr, "min_lr": lr / 10,
            "warmup_iters": 30, "weight_decay": 0.0, "label_smoothing": 0.0, "batch_tokens": 3072,
            "max_batch_size": 16, "eval_minutes": max(minutes / 3, 1), "eval_examples": 200, "gen_examples": gen_examples,
            "num_beams": 1, "max_new_tokens": 48, "metrics": "rouge", "quiet": None, **overrides}


def run_method(method: str, args: argparse.Namespace) -> dict:
    """One method's run in a process of its own (its peak RSS is its own), then what it measured."""
    import subprocess
    import time

    config = adapt_config(method, args.minutes, args.gen_examples)
    out = Path(config["out_dir"])
    if out.exists():
        import shutil

        shutil.rmtree(out)
    argv = [sys.executable, "-m", "lmforge.cli.main", "finetune"]
    for key, value in config.items():
        argv += [f"--{key}"] if key == "quiet" else [f"--{key}", "null" if value is None else str(value)]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    began = time.perf_counter()
    child = subprocess.Popen(argv, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"{method}: lmforge finetune failed ({status})")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    speeds = sorted(s["tokens_per_sec"] for s in steps[1:] or steps)
    best = min(metrics, key=lambda m: m["val_loss"])
    return {"method": method, "config": config, "first_val_loss": metrics[0]["val_loss"],
            "best_val_loss": best["val_loss"], "best_iter": best["iter"], "iters": metrics[-1]["iter"],
            "rouge": {k: metrics[-1].get(k) for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")},
            "trainable_parameters": trainable_parameters(method),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "train_tokens_per_sec_median": speeds[len(speeds) // 2],
            "tokens_seen": metrics[-1]["tokens"], "wall_s": round(time.perf_counter() - began, 1)}


def trainable_parameters(method: str) -> dict:
    import lmforge
    from lmforge.adapt.config import AdapterConfig
    from lmforge.adapt.training import prepare_training

    ckpt = lmforge.load(RUNS / "base" / "best")
    total = sum(p.numel() for p in ckpt.model.parameters())
    overrides = METHODS[method][0]
    if overrides:
        config = AdapterConfig(**{k.removeprefix("adapter."): v for k, v in overrides.items()})
        prepare_training(ckpt.model, config, "base", ckpt.tokenizer, 0)
    trainable = sum(p.numel() for p in ckpt.model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "percent": round(100 * trainable / total, 3)}


def adapt(args: argparse.Namespace) -> None:
    """Each method in turn; the results file is rewritten after each, so an interrupted series keeps what ran."""
    data_root()
    path = here / "results" / f"adapters_samsum_cpu_{args.minutes:g}min.json"
    # the methods run before with this budget stay in the file (a later call may add one), in METHODS' order
    rows = json.loads(path.read_text())["runs"] if path.is_file() else []
    for method in args.methods:
        rows = [r for r in rows if r["method"] != method] + [run_method(method, args)]
        rows.sort(key=lambda r: list(METHODS).index(r["method"]))
        record = summarize(rows, args)
        path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


def summarize(rows: list[dict], args: argparse.Namespace) -> dict:
    """The runs so far, with each one's gain in validation loss over the base and its share of full fine-tuning's."""
    base_loss = next((r["first_val_loss"] for r in rows if r["method"] in ("full", "lora-r8", "lora-r16")), None)
    full = next((r for r in rows if r["method"] == "full"), None)
    for r in rows:
        if base_loss is not None:
            r["gain_over_base"] = base_loss - r["best_val_loss"]
        if full is not None and base_loss is not None:
            r["share_of_full_gain"] = r["gain_over_base"] / full["gain_over_base"]
    return {"command": " ".join(sys.argv), "date": datetime.datetime.now().isoformat(timespec="minutes"),
            "machine": machine(), "torch": torch.__version__, "minutes_per_method": args.minutes,
            "base": json.loads((RUNS / "base.json").read_text()) if (RUNS / "base.json").is_file() else None,
            "base_val_loss": base_loss, "template": TEMPLATE, "runs": rows}


# ---- speed: LoRA training steps, lmforge against transformers + PEFT ---------------------------------

def speed(args: argparse.Namespace) -> None:
    """Training tokens/s of the base's shape with LoRA r 8 on q_proj, v_proj, lmforge and transformers + PEFT, on
    the same random weights and batches, alternating rounds in this process; medians and their ratio."""
    import statistics
    import tempfile
    import time

    import peft
    import transformers
    import yaml

    import lmforge
    from lmforge.adapt import AdapterSettings, add_adapter
    from lmforge.config import ModelConfig
    from lmforge.losses import cross_entropy
    from lmforge.models.decoder import DecoderLM

    torch.manual_seed(0)
    shape = yaml.safe_load(BASE_CONFIG.read_text())["model"]
    config = ModelConfig.for_family("llama", vocab_size=4096, n_layer=shape["n_layer"], n_head=shape["n_head"],
                                    n_embd=shape["n_embd"], intermediate_size=shape["intermediate_size"],
                                    block_size=shape["block_size"])
    ours = DecoderLM(config)
    with tempfile.TemporaryDirectory() as folder:
        lmforge.save(ours, folder)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    add_adapter(ours, "default", AdapterSettings("lora", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    for model in (ours, theirs):
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
        model.train()
    batch = torch.randint(0, 4096, (args.batch, args.length + 1))
    inputs, labels = batch[:, :-1], batch[:, 1:]

    compiled = torch.compile(ours)  # what `--compile true` trains (LoopConfig.compile)

    def trainer(forward):
        def step(optimizer):
            loss, _ = cross_entropy(forward(), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    runs = {"lmforge": (trainer(lambda: ours(inputs)), ours),
            "lmforge compiled": (trainer(lambda: compiled(inputs)), ours),
            "transformers+peft": (trainer(lambda: theirs(input_ids=inputs).logits), theirs)}
    optimizers = {name: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)
                  for name, (_, model) in runs.items()}
    for name, (step, _) in runs.items():  # warm up
        for _ in range(2):
            step(optimizers[name])
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (step, _) in runs.items():
            began = time.perf_counter()
            for _ in range(args.steps):
                step(optimizers[name])
            times[name].append((time.perf_counter() - began) / args.steps)
    tokens = args.batch * args.length
    medians = {name: tokens / statistics.median(t) for name, t in times.items()}
    record = {"command": " ".join(sys.argv), "date": datetime.datetime.now().isoformat(timespec="minutes"),
              "machine": machine(), "torch": torch.__version__, "transformers": transformers.__version__,
              "peft": peft.__version__, "threads": torch.get_num_threads(), "shape": shape, "vocab_size": 4096,
              "adapter": "LoRA r 8, alpha 16, q_proj and v_proj", "batch": [args.batch, args.length],
              "steps_per_round": args.steps, "rounds": args.rounds, "seconds_per_step": times,
              "tokens_per_sec_median": medians,
              "ratio": {name: medians[name] / medians["transformers+peft"] for name in ("lmforge", "lmforge compiled")}}
    path = here / "results" / "adapters_lora_speed.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


def machine() -> dict:
    return {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
            "python": platform.python_version(), "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step")
    p = sub.add_parser("pretrain", help="write the corpus and pretrain the base model")
    p.add_argument("--minutes", type=float, help="override the recipe's 60-minute budget")
    p = sub.add_parser("adapt", help="adapt the base to SAMSum with each method for the same budget")
    p.add_argument("--minutes", type=float, default=10, help="training budget of each method (default 10)")
    p.add_argument("--gen-examples", type=int, default=100, help="validation dialogues summarized for ROUGE")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p = sub.add_parser("speed", help="LoRA training tokens/s: lmforge against transformers + PEFT")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="training steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.step is None:  # the whole recipe, with every step's defaults (as bench/run_all.py runs it)
        for step in ("speed", "pretrain", "adapt"):
            main_args = parser.parse_args([step])
            {"pretrain": pretrain, "adapt": adapt, "speed": speed}[step](main_args)
        return
    {"pretrain": pretrain, "adapt": adapt, "speed": speed}[args.step](args)


if __name__ == "__main__":
    main()
