"""New tokens per second: lmforge's generate against transformers' generate on the same weights.

Both run side by side in this process, CPU, float32, `--threads` threads (default 2), on random
GPT-2-shaped models without an EOS token (generation never stops early). Every repetition runs
both systems, alternating which goes first; we report medians and the ratio lmforge / transformers.
The GPT-2-small row is also compared with the memory floor: the float32 weights read once per
token at the copy bandwidth measured here (bytes read plus bytes written per second by a large copy).

    python bench/bench_generate.py [--reps 5] [--rows small-greedy,gpt2-greedy] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine_info import lscpu_fields  # noqa: E402

ROWS = {
    # name: (model, batch, new tokens, decoding parameters)
    "small-greedy": ("small", 1, 200, dict(do_sample=False)),
    "small-sample": ("small", 8, 200, dict(do_sample=True, top_k=50, top_p=0.95, temperature=0.8)),
    "small-beam": ("small", 1, 100, dict(num_beams=4)),
    "gpt2-greedy": ("gpt2", 1, 128, dict(do_sample=False)),
    "gpt2-beam": ("gpt2", 1, 32, dict(num_beams=4)),  # no target: shows the packed weights on a large model
}
MODELS = {
    "small": dict(n_layer=6, n_head=6, n_embd=384, vocab_size=65, n_positions=256),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024),
}
PROMPT_LEN = 16


def machine() -> dict:
    fields = lscpu_fields()
    keep = ("Model name", "CPU(s)", "Thread(s) per core", "L2 cache", "L3 cache")
    return {k: fields[k] for k in keep if k in fields} | {"platform": platform.platform()}


def copy_bandwidth(threads: int) -> float:
    """Copy bandwidth, bytes read plus bytes written per second, for a 256 MiB float32 buffer (fastest of 9)."""
    a = torch.randn(64 * 2**20)
    b = torch.empty_like(a)
    times = []
    for _ in range(9):
        t = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - t)
    return 2 * a.numel() * 4 / min(times)


def build(name: str, folder: Path):
    import transformers as tf

    import lmforge

    cfg = tf.GPT2Config(**MODELS[name], bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    hf = tf.GPT2LMHeadModel(cfg).float().eval()
    hf.save_pretrained(folder / name)
    ours = lmforge.load(folder / name).model
    weight_bytes = sum(p.numel() for p in ours.parameters()) * 4
    return hf, ours, weight_bytes


def run_ours(model, ids, new, params, seed, compile=False):
    from lmforge.generate import generate

    torch.manual_seed(seed)  # the global generator, as transformers uses: same seed, same samples
    out = generate(model, ids, max_new_tokens=new, ignore_eos=True, compile=compile, **params)
    assert int(out.output.lengths.min()) == new
    return out.output.sequences


def run_hf(model, ids, new, params, seed):
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, eos_token_id=None,
                             pad_token_id=0, **params)
    assert out.shape[1] - ids.shape[1] == new
    return out[:, ids.shape[1]:]


def run_ours_compiled(model, ids, new, params, seed):
    return run_ours(model, ids, new, params, seed, compile=True)


def bench_row(name, hf, ours, reps, compile=False) -> dict:
    _, batch, new, params = ROWS[name]
    vocab = ours.config.vocab_size
    ids = torch.randint(0, vocab, (batch, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    reference = run_hf(hf, ids, new, params, 0)
    same = torch.equal(run_ours(ours, ids, new, params, 0), reference)  # also warms up
    order = [("lmforge", run_ours, ours), ("transformers", run_hf, hf)]
    extra = {}
    if compile:  # the first call compiles the step for this shape: timed on its own, not in the medians
        start = time.perf_counter()
        extra["compiled_same_tokens"] = torch.equal(run_ours_compiled(ours, ids, new, params, 0), reference)
        extra["compiled_first_call_s"] = time.perf_counter() - start
        order.append(("lmforge_compiled", run_ours_compiled, ours))
    times = {system: [] for system, _, _ in order}
    for rep in range(reps):
        for system, fn, model in order if rep % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            fn(model, ids, new, params, rep)
            times[system].append(time.perf_counter() - t)
    tokens = batch * new
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    if compile:
        extra["compiled_speedup"] = med["transformers"] / med["lmforge_compiled"]
        extra["compiled_best_speedup"] = best["transformers"] / best["lmforge_compiled"]
    return extra | {
        "row": name, "batch": batch, "new_tokens": new, "params": params, "same_tokens": same,
        "seconds": times,
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "ms_per_step": {k: 1e3 * v / new for k, v in med.items()},
        "speedup": med["transformers"] / med["lmforge"],
        # on a shared machine the fastest repetition is the one least disturbed by other processes
        "best_tokens_per_s": {k: tokens / v for k, v in best.items()},
        "best_speedup": best["transformers"] / best["lmforge"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--compile", action="store_true", help="also time generate(..., compile=True)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "generate_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    rows = args.rows.split(",")
    load_before = os.getloadavg()
    results = []
    bandwidth = copy_bandwidth(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in dict.fromkeys(ROWS[r][0] for r in rows):
            hf, ours, weight_bytes = build(model_name, Path(tmp))
            for row in (r for r in rows if ROWS[r][0] == model_name):
                result = bench_row(row, hf, ours, args.reps, args.compile)
                if row == "gpt2-greedy":
                    floor_ms = 1e3 * weight_bytes / bandwidth
                    result["floor_ms_per_token"] = floor_ms
                    result["lmforge_over_floor"] = result["ms_per_step"]["lmforge"] / floor_ms
                    result["best_lmforge_over_floor"] = 1e3 * min(result["seconds"]["lmforge"]) / ROWS[row][2] / floor_ms
                    result["transformers_over_floor"] = result["ms_per_step"]["transformers"] / floor_ms
                results.append(result)
                tps = result["tokens_per_s"]
                print(f"{row:14s} lmforge {tps['lmforge']:8.1f} tok/s  transformers {tps['transformers']:8.1f} tok/s"
                      f"  x{result['speedup']:.2f} (fastest reps: x{result['best_speedup']:.2f})"
                      f"  same tokens: {result['same_tokens']}"
                      + (f"  floor {result['floor_ms_per_token']:.1f} ms, lmforge "
                         f"{result['ms_per_step']['lmforge']:.1f} ms/token ({result['lmforge_over_floor']:.2f}x)"
                         if "floor_ms_per_token" in result else "")
                      + (f"  compiled {tps['lmforge_compiled']:.1f} tok/s x{result['compiled_speedup']:.2f}"
                         f" (first call {result['compiled_first_call_s']:.0f} s, same tokens: "
                         f"{result['compiled_same_tokens']})" if args.compile else ""), flush=True)
            del hf, ours
    report = {
        "benchmark": "generate_speed",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": machine(),
        "threads": args.threads,
        "dtype": "float32",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "prompt_tokens": PROMPT_LEN,
        "repetitions": args.reps,
        "compile": args.compile,
        "results": results,
    }
    write_report(report, Path(args.out))


def write_report(report: dict, out: Path) -> None:
    """Write the JSON report whole or not at all (a temporary file, then a rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    tmp_out.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
