"""Decoding speed and memory of quantized weights: lmforge float32 (eager, compiled), int8, int4 (output head float
or quantized too), and transformers float32, on the same random GPT-2-small weights, side by side in one process.

Rows: batch 1 greedy (128 new tokens by default), and 4 and 8 rows (beam search with 4 beams, sampling a batch of
8). Each repetition runs every system, alternating the order; medians are reported in ms per decoding step,
with each one's ratio to the float32 memory floor (the float32 weights read once per step at the copy bandwidth
measured here, as bench_generate.py does). Peak memory (RSS) of loading and generating with each system is
measured in a fresh process per system.

    flock /tmp/lmforge-bench.lock python bench/bench_quant.py [--reps 3] [--new 128] [--no-compile]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_generate import copy_bandwidth, machine, write_report  # noqa: E402
from machine_info import cpu_flags  # noqa: E402

GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
PROMPT_LEN = 16
# system: (quantize, quantize the head, compile)
SYSTEMS = {
    "float32": (None, False, False),
    "float32_compiled": (None, False, True),
    "int8": ("int8", False, False),
    "int8_head": ("int8", True, False),
    "int8_head_compiled": ("int8", True, True),
    "int4": ("int4", False, False),
    "int4_head": ("int4", True, False),
}


def build(folder: Path):
    import transformers as tf

    cfg = tf.GPT2Config(**GPT2_SMALL, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    hf = tf.GPT2LMHeadModel(cfg).float().eval()
    hf.save_pretrained(folder)
    return hf


def load(folder: Path, system: str):
    import lmforge

    quantize, head, _ = SYSTEMS[system]
    return lmforge.load(folder, quantize=quantize, quantize_head=head).model


def stored_bytes(model) -> int:
    """Bytes of weights a decoding step reads: parameters and persistent buffers (integers and scales), the
    position table included, counted once (a tied head shares the embedding)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.state_dict().values()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def run_ours(model, ids, new, params, compile, seed):
    from lmforge.generate import generate

    torch.manual_seed(seed)
    out = generate(model, ids, max_new_tokens=new, ignore_eos=True, compile=compile, **params)
    return out.output.sequences


def run_hf(model, ids, new, params, seed):
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, eos_token_id=None,
                             pad_token_id=0, **params)
    return out[:, ids.shape[1]:]


def bench_rows(folder: Path, hf, systems: list[str], reps: int, new: int, wanted: list[str], on_row) -> dict:
    shared: dict = {}  # a compiled system decodes the eager one's model (compiling does not change it)
    models = {name: shared.setdefault(SYSTEMS[name][:2], load(folder, name)) if SYSTEMS[name][:2] not in shared
              else shared[SYSTEMS[name][:2]] for name in systems}
    rows = [("greedy", 1, new, dict(do_sample=False)), ("beam4", 1, max(8, new // 4), dict(num_beams=4)),
            ("sample8", 8, max(8, new // 4), dict(do_sample=True, top_k=50, top_p=0.95))]
    results = []
    weight_bytes = {name: stored_bytes(models[name]) for name in systems}
    for row, batch, tokens, params in (r for r in rows if r[0] in wanted):
        ids = torch.randint(0, GPT2_SMALL["vocab_size"], (batch, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
        calls = {name: functools.partial(run_ours, models[name], ids, tokens, params, SYSTEMS[name][2])
                 for name in systems if row == "greedy" or not SYSTEMS[name][2]}  # compiled: the greedy row only
        calls["transformers_float32"] = functools.partial(run_hf, hf, ids, tokens, params)
        first, outputs = {}, {}
        for name, fn in calls.items():  # warm-up: the compiled systems compile here
            t = time.perf_counter()
            outputs[name] = fn(0)
            first[name] = time.perf_counter() - t
        greedy_same = {name: outputs[name].tolist() == outputs["float32"].tolist() for name in systems
                       if name in outputs} if row == "greedy" else {}
        times = {name: [] for name in calls}
        names = list(calls)
        for rep in range(reps):
            for name in names if rep % 2 == 0 else names[::-1]:
                t = time.perf_counter()
                calls[name](rep)
                times[name].append(time.perf_counter() - t)
        results.append({
            "row": row, "batch": batch, "new_tokens": tokens, "params": params, "seconds": times,
            "first_call_s": first,
            "ms_per_step": {k: 1e3 * statistics.median(v) / tokens for k, v in times.items()},
            "best_ms_per_step": {k: 1e3 * min(v) / tokens for k, v in times.items()},
            "same_greedy_tokens_as_float32": greedy_same,
        })
        print(row, {k: round(v, 1) for k, v in results[-1]["ms_per_step"].items()}, flush=True)
        on_row(results, weight_bytes)
    return weight_bytes


MEMORY_CHILD = """
import resource, sys, torch
import lmforge
sys.path.insert(0, {bench!r})
from bench_quant import run_ours
torch.set_num_threads({threads})
model = lmforge.load({folder!r}).model
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run_ours(model, torch.zeros(1, 16, dtype=torch.long), 16, dict(do_sample=False), False, 0)
print(loaded, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_memory(folder: Path, system: str, threads: int) -> dict:
    """Peak RSS (MiB) of a fresh process after loading `system` (a quantized system from its converted folder),
    and after generating 16 tokens with it."""
    import lmforge

    if SYSTEMS[system][0] is not None:
        converted = folder.parent / system
        if not converted.exists():
            lmforge.save(load(folder, system), converted)
        folder = converted
    code = MEMORY_CHILD.format(bench=str(Path(__file__).parent), threads=threads, folder=str(folder))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    loaded, generated = (int(x) / 1024 for x in out[-2:])
    return {"after_load_mib": loaded, "after_generate_mib": generated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--new", type=int, default=128, help="new tokens of the greedy row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled systems")
    parser.add_argument("--rows", default="greedy,beam4,sample8")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                        help="peak RSS of each system in a fresh process")
    parser.add_argument("--shape", default="gpt2-small", choices=["gpt2-small", "smoke"],
                        help="smoke: a 2-layer model, to try the script quickly")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "quant_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.shape == "smoke":
        GPT2_SMALL.update(n_layer=2, n_head=4, n_embd=128, vocab_size=1000, n_positions=256)
    systems = [s for s in SYSTEMS if not (args.no_compile and SYSTEMS[s][2])]
    load_before = os.getloadavg()
    start = time.perf_counter()
    bandwidth = copy_bandwidth(args.threads)
    report = {
        "benchmark": "quant_speed",
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": machine(), "cpu_flags": cpu_flags(), "threads": args.threads, "torch": torch.__version__,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "peak_rss": {},
    }

    def write(results: list[dict], weight_bytes: dict) -> None:  # after every row: a run cut short keeps its rows
        floor_ms = 1e3 * weight_bytes["float32"] / bandwidth
        for r in results:
            r["ratio_to_float32_floor"] = {k: v / floor_ms for k, v in r["ms_per_step"].items()}
        report.update(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      load_average_1_5_15min={"before": load_before, "after": os.getloadavg()},
                      wall_s=time.perf_counter() - start, float32_floor_ms_per_step=floor_ms,
                      weight_bytes=weight_bytes, results=results,
                      parent_peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        write_report(report, Path(args.out))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gpt2-small"
        hf = build(folder)
        weight_bytes = bench_rows(folder, hf, systems, args.reps, args.new, args.rows.split(","),
                                  lambda results, wb: write(results, wb))
        if args.memory:
            report["peak_rss"] = {name: peak_memory(folder, name, args.threads) for name in systems
                                  if not SYSTEMS[name][2]}
            write(report["results"], weight_bytes)
    print(markdown(report))


def markdown(report: dict) -> str:
    """The bench/README.md table: ms per decoding step (median) and its ratio to the float32 memory floor."""
    rows = report["results"]
    systems = list(dict.fromkeys(k for r in rows for k in r["ms_per_step"]))
    lines = ["| system | " + " | ".join(f"{r['row']} (batch {r['batch']}, {r['new_tokens']} tokens)" for r in rows)
             + " | weights MiB | peak RSS MiB (load / generate) |", "|---" * (len(rows) + 3) + "|"]
    for name in systems:
        cells = [f"{r['ms_per_step'][name]:.1f} ms ({r['ratio_to_float32_floor'][name]:.2f}x)"
                 if name in r["ms_per_step"] else "" for r in rows]
        weights = report["weight_bytes"].get(name.removesuffix("_compiled"))
        rss = report["peak_rss"].get(name)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {weights / 2**20:.0f} |" if weights else
                     f"| {name} | " + " | ".join(cells) + " | |")
        if rss:
            lines[-1] += f" {rss['after_load_mib']:.0f} / {rss['after_generate_mib']:.0f} |"
        else:
            lines[-1] += " |"
    return "\n".join(lines)


if __name__ == "__main__":
    main()
