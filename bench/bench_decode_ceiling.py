"""How fast can eager PyTorch decode the small model at batch 1? The ceiling under issue 4's greedy row.

Runs, side by side in one process (CPU, float32, 2 threads, the order alternating every repetition),
greedy decoding of `--new` tokens after a 16-token prompt on the 6x6x384, vocabulary-65 GPT-2 model of
bench_generate.py, four ways:

- ``transformers``: `GPT2LMHeadModel.generate`, as in bench_generate.py;
- ``lmforge``: `lmforge.generate` (session, KV cache, search loop, per-step log-probabilities);
- ``hand_loop``: the least eager PyTorch can do per token: one function with the model's operations
  only (embeddings, per layer: layer norm, QKV product, two cache writes, two batched products and a
  softmax for attention, output product, residual, layer norm, MLP, residual; final norm, head,
  argmax), no modules, no masks, no search logic, no log-probabilities;
- ``matrices_only``: the 25 matrix-vector products of one token (all weights streamed once), nothing else;
- ``compiled_step`` (with `--compile`): the hand loop's step over a fixed-size cache (attention masked to
  the filled positions, so every step has the same shapes) compiled once by `torch.compile` (inductor,
  default mode, `dynamic=False`); its compilation is done before the timing and reported apart.

`hand_loop` is a ceiling for any eager implementation; `matrices_only` is the part no implementation
avoids in float32. Prints medians (ms per token) and ratios to transformers; writes a JSON.

With `--compile` also ``lmforge_compiled``: `lmforge.generate(..., compile=True)`. With `--model gpt2` the
same on the GPT-2-small shape, with the memory floor of bench_generate (weights / copy bandwidth).

    python bench/bench_decode_ceiling.py [--reps 7] [--new 200] [--compile] [--model small|gpt2] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_generate import PROMPT_LEN, build, copy_bandwidth, machine, write_report  # noqa: E402


def hand_loop(model, prompt_token: int, new: int) -> None:
    """Greedy decoding of `new` tokens with the bare operations (the prompt is one token: attention over a
    short cache costs the same per step)."""
    c = model.config
    H, D, E = c.n_head, c.head_dim, c.n_embd
    keys = torch.zeros(c.n_layer, H, new + 1, D)
    values = torch.zeros(c.n_layer, H, new + 1, D)
    scale = D ** -0.5
    token = prompt_token
    for pos in range(new):
        x = (model.wte.weight[token] + model.wpe.weight[pos]).view(1, E)
        for i, b in enumerate(model.blocks):
            h = F.layer_norm(x, (E,), b.ln1.weight, b.ln1.bias, b.ln1.eps)
            qkv = F.linear(h, b.attn.qkv.weight, b.attn.qkv.bias).view(3, H, 1, D)
            keys[i, :, pos:pos + 1].copy_(qkv[1])
            values[i, :, pos:pos + 1].copy_(qkv[2])
            probs = torch.softmax(torch.bmm(qkv[0], keys[i, :, :pos + 1].transpose(1, 2)).mul_(scale), -1)
            y = torch.bmm(probs, values[i, :, :pos + 1]).view(1, E)
            x = x + F.linear(y, b.attn.proj.weight, b.attn.proj.bias)
            h = F.layer_norm(x, (E,), b.ln2.weight, b.ln2.bias, b.ln2.eps)
            h = F.gelu(F.linear(h, b.mlp.fc.weight, b.mlp.fc.bias), approximate="tanh")
            x = x + F.linear(h, b.mlp.proj.weight, b.mlp.proj.bias)
        x = F.layer_norm(x, (E,), model.ln_f.weight, model.ln_f.bias, model.ln_f.eps)
        token = int(F.linear(x, model.lm_head.weight).argmax())


def compiled_loop(model, new: int):
    """A function decoding `new` tokens greedily with a compiled, fixed-shape step, and the compile seconds."""
    c = model.config
    H, D, E = c.n_head, c.head_dim, c.n_embd
    keys = [torch.zeros(H, new, D) for _ in range(c.n_layer)]  # one tensor per layer, updated in place
    values = [torch.zeros(H, new, D) for _ in range(c.n_layer)]
    for t in keys + values:
        torch._dynamo.mark_static_address(t)
    slots = torch.arange(new)

    def step(token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = model.wte(token) + model.wpe(pos)
        hidden = slots > pos
        for i, b in enumerate(model.blocks):
            h = F.layer_norm(x, (E,), b.ln1.weight, b.ln1.bias, b.ln1.eps)
            qkv = F.linear(h, b.attn.qkv.weight, b.attn.qkv.bias).view(3, H, 1, D)
            keys[i].index_copy_(1, pos, qkv[1])
            values[i].index_copy_(1, pos, qkv[2])
            scores = torch.bmm(qkv[0], keys[i].transpose(1, 2)).mul_(D ** -0.5).masked_fill_(hidden, float("-inf"))
            y = torch.bmm(torch.softmax(scores, -1), values[i]).view(1, E)
            x = x + F.linear(y, b.attn.proj.weight, b.attn.proj.bias)
            h = F.layer_norm(x, (E,), b.ln2.weight, b.ln2.bias, b.ln2.eps)
            h = F.gelu(F.linear(h, b.mlp.fc.weight, b.mlp.fc.bias), approximate="tanh")
            x = x + F.linear(h, b.mlp.proj.weight, b.mlp.proj.bias)
        x = F.layer_norm(x, (E,), model.ln_f.weight, model.ln_f.bias, model.ln_f.eps)
        return F.linear(x, model.lm_head.weight).argmax(-1)

    compiled = torch.compile(step, dynamic=False)
    positions = [torch.tensor([p]) for p in range(new)]

    def run(prompt_token: int) -> None:
        token = torch.tensor([prompt_token])
        for pos in positions:
            token = compiled(token, pos)

    start = time.perf_counter()
    run(0)
    return run, time.perf_counter() - start


def matrices_only(model, new: int) -> None:
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {m: torch.randn(1, m.in_features) for m in linears}
    for _ in range(new):
        for m in linears:
            F.linear(inputs[m], m.weight, m.bias)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--new", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true",
                        help="add the compiled fixed-shape step and generate(..., compile=True)")
    parser.add_argument("--model", choices=["small", "gpt2"], default="small",
                        help="bench_generate's model (gpt2: the GPT-2-small shape, also reports the memory floor)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode_ceiling.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    import transformers

    from lmforge.generate import generate

    with tempfile.TemporaryDirectory() as tmp:
        hf, ours, weight_bytes = build(args.model, Path(tmp))
    ids = torch.randint(0, ours.config.vocab_size, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    new = args.new
    systems = {
        "transformers": lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                            eos_token_id=None, pad_token_id=0, do_sample=False),
        "lmforge": lambda: generate(ours, ids, max_new_tokens=new, ignore_eos=True, do_sample=False),
        "hand_loop": lambda: hand_loop(ours, int(ids[0, -1]), new),
        "matrices_only": lambda: matrices_only(ours, new),
    }
    compile_s = None
    if args.compile:
        run_compiled, compile_s = compiled_loop(ours, new)
        systems["compiled_step"] = lambda: run_compiled(int(ids[0, -1]))
        systems["lmforge_compiled"] = lambda: generate(ours, ids, max_new_tokens=new, ignore_eos=True,
                                                       do_sample=False, compile=True)
        print(f"compiled the step in {compile_s:.1f} s")
    for run in systems.values():  # warm-up
        run()
    ms = {name: [] for name in systems}
    for rep in range(args.reps):
        names = list(systems) if rep % 2 == 0 else list(systems)[::-1]
        for name in names:
            start = time.perf_counter()
            systems[name]()
            ms[name].append(1e3 * (time.perf_counter() - start) / new)
    med = {name: statistics.median(v) for name, v in ms.items()}
    floor = None
    if args.model == "gpt2":  # the float32 weights read once per token at the copy bandwidth (bench_generate)
        floor = 1e3 * weight_bytes / copy_bandwidth(args.threads)
        print(f"floor          {floor:6.2f} ms/token")
    for name, value in med.items():
        over = f"  {value / floor:5.2f}x floor" if floor else ""
        print(f"{name:16s} {value:6.2f} ms/token  {med['transformers'] / value:5.2f}x transformers{over}")
    report = {
        "benchmark": "decode_ceiling", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python"] + sys.argv), "machine": machine(), "threads": args.threads,
        "torch": torch.__version__, "transformers": transformers.__version__, "model": args.model, "new_tokens": new,
        "floor_ms_per_token": floor,
        "repetitions": args.reps, "compile_s": compile_s, "ms_per_token": ms, "ms_per_token_median": med,
        "speedup_vs_transformers": {name: med["transformers"] / value for name, value in med.items()},
    }
    write_report(report, Path(args.out))


if __name__ == "__main__":
    main()
