"""Which weight-only quantized product is fastest on this CPU for a decoding step's few rows?

For GPT-2-small's three linear shapes (in x out: 768 x 2304, 768 x 3072, 3072 x 768) and 1, 4 and 8 rows of
activations, times each candidate kernel side by side in one process, alternating their order every round,
and reports the median time per product, the weight bytes it reads per second, and its ratio to float32
`F.linear` on the same shape and rows. Candidates:

- float32: `F.linear`; the MKL-packed product a decoding session uses at 4 rows or more (generate/accel.py);
- int8 per output channel: `torch.ops.aten._weight_int8pack_mm`; dequantize-then-`F.linear` eager (rebuilds a
  float weight every call: a reference, not allowed in a decoding step); the same under `torch.compile`; a
  compiled multiply-and-sum that inductor turns into one loop reading the int8 weight; fbgemm's dynamic int8
  linear (`torch.ops.quantized.linear_dynamic`, which ALSO quantizes the activations to int8 per call);
- int4 groupwise (groups of 32 and 128): `_weight_int4pack_mm_for_cpu` on `_convert_weight_to_int4pack_for_cpu`'s
  layout; a compiled unpack-and-multiply-and-sum over nibbles packed two to a byte;
- bfloat16 activations: `F.linear` with a bf16 weight, `_weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu`
  with bf16 activations (fast only where `lscpu` lists avx512_bf16 / amx_bf16; the flags are recorded).

    flock /tmp/lmforge-bench.lock python bench/bench_quant_kernels.py [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from machine_info import cpu_flags, cpu_name  # noqa: E402

SHAPES = [(768, 2304), (768, 3072), (3072, 768)]  # (in, out): attention qkv, MLP up, MLP down
ROWS = [1, 4, 8]


def int8_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def int4_weight(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unsigned 4-bit codes 0..15 as int32 (out, in), scales (out, in/group), zero points) as asymmetric-free
    symmetric groups: code = round(w / scale) + 8, w ~= (code - 8) * scale."""
    out, inp = w.shape
    g = w.view(out, inp // group, group)
    scale = g.abs().amax(dim=2).clamp(min=1e-12) / 7
    codes = (torch.round(g / scale[..., None]).clamp(-8, 7) + 8).to(torch.int32).view(out, inp)
    return codes, scale, torch.zeros_like(scale)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes to a byte along the input: (out, in) int32 0..15 -> (out, in/2) uint8."""
    c = codes.to(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def candidates(weights: list[torch.Tensor], rows: int) -> dict:
    """name -> (function, [arguments for each weight of the pool]) for `rows` rows."""
    out, inp = weights[0].shape
    x = torch.randn(rows, inp)
    found: dict = {}

    def add(name, fn, make):
        found[name] = (fn, [make(w) for w in weights])

    add("f32_linear", F.linear, lambda w: (x, w))
    if rows >= 4 and torch.backends.mkl.is_available():
        add("f32_mkl_packed", lambda x, p, w: torch.ops.mkl._mkl_linear(x, p, w, None, rows),
            lambda w: (x, torch.ops.mkl._mkl_reorder_linear_weight(w, rows), w))
    int8 = [int8_weight(w) for w in weights]
    found["int8_int8pack_mm"] = (torch.ops.aten._weight_int8pack_mm, [(x, w8, s8) for w8, s8 in int8])
    found["int8_bf16act_int8pack_mm"] = (bf16_int8pack_mm, [(x, w8, s8.to(torch.bfloat16)) for w8, s8 in int8])
    found["int8_dequant_linear_eager"] = (dequant_linear, [(x, w8, s8) for w8, s8 in int8])
    found["int8_dequant_linear_compiled"] = (torch.compile(dequant_linear, dynamic=False),
                                             [(x, w8, s8) for w8, s8 in int8])
    found["int8_mulsum_compiled"] = (torch.compile(mulsum_int8, dynamic=False), [(x, w8, s8) for w8, s8 in int8])
    torch.backends.quantized.engine = "fbgemm"
    found["int8_fbgemm_dynamic_act_quant"] = (torch.ops.quantized.linear_dynamic, [
        (x, torch.ops.quantized.linear_prepack(torch.quantize_per_channel(
            w, s8.double(), torch.zeros(out, dtype=torch.long), 0, torch.qint8), None))
        for w, (_, s8) in zip(weights, int8)])
    del int8
    compiled_int4 = torch.compile(mulsum_int4, dynamic=False)
    for group in (32, 128):
        int4 = [int4_weight(w, group) for w in weights]
        # the kernel computes (code - 8) * scale + zero, scales and zeros as (in/group, out, 2)
        packed = [(torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2),
                   torch.stack([scale, zero], dim=2).transpose(0, 1).contiguous()) for codes, scale, zero in int4]
        found[f"int4_g{group}_int4pack_mm"] = (
            lambda x, p, sz, g=group: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, g, sz),
            [(x, p, sz) for p, sz in packed])
        found[f"int4_g{group}_bf16act_int4pack_mm"] = (
            lambda x, p, sz, g=group: torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), p, g, sz).float(),
            [(x, p, sz.to(torch.bfloat16)) for p, sz in packed])
        found[f"int4_g{group}_mulsum_compiled"] = (compiled_int4, [(x, pack_nibbles(c), s) for c, s, _ in int4])
        del int4, packed
    add("bf16_linear", bf16_linear, lambda w: (x, w.to(torch.bfloat16)))
    return found


def bf16_linear(x, w):
    return F.linear(x.to(torch.bfloat16), w).float()


def bf16_int8pack_mm(x, w8, scale):
    return torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), w8, scale).float()


def dequant_linear(x, w8, scale):
    return F.linear(x, w8.to(x.dtype) * scale[:, None])


def mulsum_int8(x, w8, scale):
    """x (rows, in) times int8 w (out, in): a broadcast multiply and a sum over the input, which inductor
    lowers to one reduction loop reading each int8 weight once per row."""
    return (x[:, None, :] * w8[None].to(x.dtype)).sum(-1) * scale


def mulsum_int4(x, nib, scale):
    """x (rows, in) times 4-bit codes two to a byte (out, in/2), scale per group (out, in/group)."""
    out = nib.shape[0]
    lo = (nib & 15).to(x.dtype) - 8
    hi = (nib >> 4).to(x.dtype) - 8
    w = torch.stack([lo, hi], dim=2).view(out, -1)  # (out, in): codes back in input order
    groups = scale.shape[1]
    w = (w.view(out, groups, -1) * scale[..., None]).view(out, -1)
    return (x[:, None, :] * w[None]).sum(-1)


def time_calls(fn, pool: list, calls: int) -> float:
    """Seconds per call of `fn`, cycling through the pool's weights (so that they come from memory, not cache)."""
    t = time.perf_counter()
    for i in range(calls):
        fn(*pool[i % len(pool)])
    return (time.perf_counter() - t) / calls


def bench_shape(inp: int, out: int, rows: int, rounds: int, budget_s: float, pool_bytes: int) -> list[dict]:
    torch.manual_seed(0)
    n = max(1, pool_bytes // (inp * out * 4))
    weights = [torch.randn(out, inp) * 0.02 for _ in range(n)]
    found = candidates(weights, rows)
    x, w = found["f32_linear"][1][0]
    exact = F.linear(x, w)
    errors, failed = {}, {}
    with torch.inference_mode():
        for name, (fn, pool) in list(found.items()):  # warm up (compiles) and check each against float32
            try:
                time_calls(fn, pool, len(pool))
                y = fn(*pool[0]).float()
                errors[name] = float((y - exact).abs().max() / exact.abs().max())
            except Exception as error:  # a kernel this build or CPU lacks: recorded, not timed
                failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                del found[name]
        one = time_calls(*found["f32_linear"], len(weights))
        calls = max(len(weights), int(budget_s / max(one, 1e-6)))
        times = {name: [] for name in found}
        names = list(found)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                times[name].append(time_calls(*found[name], calls))
    base = statistics.median(times["f32_linear"])
    results = []
    for name in names:
        med = statistics.median(times[name])
        nbytes = weight_bytes(name, inp, out, inp * out * 4)
        results.append({"in": inp, "out": out, "rows": rows, "kernel": name, "weights_in_pool": n, "us": 1e6 * med,
                        "us_min": 1e6 * min(times[name]), "weight_gb_s": nbytes / med / 1e9,
                        "ratio_to_f32_linear": med / base, "max_rel_error": errors[name]})
    for name, why in failed.items():
        results.append({"in": inp, "out": out, "rows": rows, "kernel": name, "failed": why})
    return results


def weight_bytes(kernel: str, inp: int, out: int, weight_f32: int) -> int:
    """Bytes of weight and scales a kernel reads."""
    if kernel.startswith("int4"):
        group = int(re.search(r"_g(\d+)_", kernel)[1])
        per_group = 4 if "bf16act" in kernel or "mulsum" in kernel else 8  # int4pack: a float scale and zero
        return inp * out // 2 + (inp * out // group) * per_group
    if kernel.startswith("int8"):
        return inp * out + out * 4
    return weight_f32 // 2 if kernel.startswith("bf16") else weight_f32


def copy_bandwidth() -> float:
    a = torch.randn(64 * 2**20)
    b = torch.empty_like(a)
    best = min(time_calls(b.copy_, [(a,)], 1) for _ in range(9))
    return 2 * a.numel() * 4 / best


def table(results: list[dict]) -> str:
    kernels = list(dict.fromkeys(r["kernel"] for r in results))
    cols = [(r["in"], r["out"], r["rows"]) for r in results if r["kernel"] == "f32_linear"]
    head = "| kernel | " + " | ".join(f"{i}x{o} r{n}" for i, o, n in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    for k in kernels:
        cells = []
        for col in cols:
            hit = [r for r in results if r["kernel"] == k and (r["in"], r["out"], r["rows"]) == col]
            if not hit:
                cells.append("")
            elif "failed" in hit[0]:
                cells.append("fails")
            else:
                cells.append(f"{hit[0]['us']:.0f} us ({hit[0]['ratio_to_f32_linear']:.2f}x)")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=0.05, help="seconds of float32 products per timing")
    parser.add_argument("--pool-mb", type=int, default=256,
                        help="float32 megabytes of weights cycled through (8x the L3 cache here: read from memory)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "quant_kernels.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    start = time.perf_counter()
    bandwidth = copy_bandwidth()
    results = []
    for inp, out in SHAPES:
        for rows in ROWS:
            part = bench_shape(inp, out, rows, args.rounds, args.budget, args.pool_mb * 2**20)
            results += part
            print(f"{inp}x{out} rows {rows}: " + ", ".join(
                f"{r['kernel']} {r['ratio_to_f32_linear']:.2f}x" for r in part if "us" in r), flush=True)
    report = {
        "benchmark": "quant_kernels",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "cpu": cpu_name(), "cpu_flags": cpu_flags(), "threads": args.threads, "torch": torch.__version__,
        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
        "wall_s": time.perf_counter() - start,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "note": "us: median microseconds per product; ratio_to_f32_linear < 1 is faster than float32 F.linear; "
                "weight_gb_s: bytes of weight (and scales) read per second; int8_fbgemm_dynamic_act_quant "
                "quantizes the activations to int8 too (not weight-only)",
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
    print(table(results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
