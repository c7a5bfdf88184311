"""Load on `lmforge serve`: concurrent streaming clients, faults under load, and transformers serve as the anchor.

    flock /tmp/lmforge-bench.lock .venv/bin/python bench/bench_serve.py            # runs/demo/train/best (make demo)
    flock /tmp/lmforge-bench.lock .venv/bin/python bench/bench_serve.py --model DIR --levels 1,8 --no-anchor

Every request is a streamed completion of a fixed prompt with fixed length (`ignore_eos`, `max_tokens`), sampled
with its own seed. For each number of concurrent clients: generated tokens/s over the wall time, time to first token
and inter-token latency (p50/p99), and whether every request completed with its length. The same requests served
one at a time give the baseline (and, being seeded, the text each concurrent request must reproduce). Faults, on
loopback only and bounded in count and time: clients that disconnect mid-stream, malformed and oversized bodies and
huge max_tokens sent while clients stream; the server must answer each with its error, finish the others, and its
resident memory must come back within 10 % of its level before the burst. The anchor is `transformers serve` (with
and without its continuous batching) on the same model and load, when it runs here (it needs fastapi and
accelerate); the results say when it did not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psutil
import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine_info import cpu_flags, cpu_name

PROMPTS = ["Return the number of", "This module provides", "Create a new", "If the value is", "The default is",
           "Raise an exception if", "Return a list of", "This function is"]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class ServerProcess:
    """A server started as a process on 127.0.0.1, its URL and its resident memory."""

    def __init__(self, argv: list[str], url: str | None = None, env: dict | None = None, ready: float = 600):
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.url = url
        deadline = time.monotonic() + ready
        if url is None:  # lmforge prints where it listens
            line = self.process.stdout.readline()
            if not line.startswith("serving"):
                raise RuntimeError(f"the server did not start: {line}{self.process.stdout.read()}")
            self.url = line.split()[3]
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stdout.read()[-2000:]}")
            time.sleep(0.5)
        raise RuntimeError("the server did not answer /health in time")

    def rss(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def stream_one(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    """One streamed completion: its text, token count, time to first token and the gaps between chunks."""
    began = time.perf_counter()
    arrivals, text, usage, finish = [], "", None, None
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        if response.status_code != 200:
            return {"status": response.status_code, "error": (await response.aread()).decode()[:300]}
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                if choice.get("text"):
                    arrivals.append(time.perf_counter())
                    text += choice["text"]
                finish = choice.get("finish_reason") or finish
    tokens = usage["completion_tokens"] if usage else len(arrivals)
    return {"status": 200, "text": text, "tokens": tokens, "finish": finish, "seconds": time.perf_counter() - began,
            "ttft": arrivals[0] - began if arrivals else None,
            "gaps": [b - a for a, b in zip(arrivals, arrivals[1:])]}


def request_body(model: str, i: int, max_tokens: int, lmforge: bool) -> dict:
    body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 1.0,
            "top_p": 0.95, "seed": i, "stream": True}
    if lmforge:
        body.update(ignore_eos=True, stream_options={"include_usage": True})
    return body


async def load(url: str, model: str, clients: int, max_tokens: int, lmforge: bool, sequential: bool = False) -> dict:
    """`clients` requests, all at once (or one after another with `sequential`)."""
    async with httpx.AsyncClient(timeout=1800, limits=httpx.Limits(max_connections=clients + 8)) as client:
        began = time.perf_counter()
        bodies = [request_body(model, i, max_tokens, lmforge) for i in range(clients)]
        if sequential:
            results = [await stream_one(client, url, b) for b in bodies]
        else:
            results = await asyncio.gather(*(stream_one(client, url, b) for b in bodies))
        wall = time.perf_counter() - began
    ok = [r for r in results if r["status"] == 200]
    tokens = sum(r["tokens"] for r in ok)
    gaps = [g for r in ok for g in r["gaps"]]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    return {"clients": clients, "sequential": sequential, "requests": len(results), "completed": len(ok),
            "complete_length": sum(r["tokens"] == max_tokens for r in ok), "tokens": tokens, "seconds": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 2),
            "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99),
            "itl_p50_ms": _ms(percentile(gaps, 50)), "itl_p99_ms": _ms(percentile(gaps, 99)),
            "texts": [r.get("text") for r in results]}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 2)


async def faults(server: ServerProcess, model: str, max_tokens: int, clients: int = 24) -> dict:
    """A bounded burst of bad requests and dropped clients while `clients` good ones stream."""
    url = server.url
    rss_before = server.rss()
    counts = {"disconnects": 12, "malformed": 8, "oversized": 4, "huge_max_tokens": 4, "unknown_model": 4}
    answers: dict[str, list[int]] = {name: [] for name in counts}

    async def drop(client, i):
        async with client.stream("POST", url + "/v1/completions",
                                 json=request_body(model, 100 + i, 10 * max_tokens, True)) as response:
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith("data: {")
                if seen >= 3:
                    break  # leaving the block closes the connection mid-stream
        answers["disconnects"].append(response.status_code)

    def plain(i: int, tokens: int, **changes) -> dict:  # a non-streamed request
        body = {**request_body(model, i, tokens, True), "stream": False, **changes}
        body.pop("stream_options")
        return body

    async def bad(client, name, **request):
        response = await client.post(url + "/v1/completions", **request)
        body = response.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        answers[name].append(response.status_code)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=200)) as client:
        good = [stream_one(client, url, request_body(model, i, max_tokens, True)) for i in range(clients)]
        bursts = [drop(client, i) for i in range(counts["disconnects"])]
        bursts += [bad(client, "malformed", content=b'{"model": "x", "prompt": [1, 2') for _ in range(counts["malformed"])]
        bursts += [bad(client, "oversized", content=b"{" + b" " * (4 << 20) + b"}") for _ in range(counts["oversized"])]
        bursts += [bad(client, "huge_max_tokens", json=plain(0, 10 ** 9))
                   for _ in range(counts["huge_max_tokens"])]
        bursts += [bad(client, "unknown_model", json=plain(0, 4, model="nope"))
                   for _ in range(counts["unknown_model"])]
        began = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(*good, *bursts), timeout=900)
        seconds = time.perf_counter() - began
    good_results = results[:clients]
    deadline = time.monotonic() + 60
    while httpx.get(url + "/health").json()["rows"] and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)
    rss_after = server.rss()
    return {"good_clients": clients, "good_completed": sum(r["status"] == 200 and r["tokens"] == max_tokens
                                                          for r in good_results),
            "answers": {name: sorted(set(codes)) for name, codes in answers.items()},
            "answered": {name: len(codes) for name, codes in answers.items()}, "sent": counts,
            "seconds": round(seconds, 2), "rss_before_mb": round(rss_before / 2 ** 20, 1),
            "rss_after_mb": round(rss_after / 2 ** 20, 1), "rss_change": round(rss_after / rss_before - 1, 4),
            "health_after": httpx.get(url + "/health").json()}


def one_row(model_dir: str, new_tokens: int = 64, rounds: int = 7) -> dict:
    """One request decoded alone: `generate` against a DecodingBatch holding only it, alternating, in one process
    (seconds per token, medians; the same tokens)."""
    import lmforge
    from lmforge.generate.api import generate, resolve_config
    from lmforge.generate.batch import BatchRequest, DecodingBatch

    ckpt = lmforge.load(model_dir)
    prompt = ckpt.tokenizer.encode(PROMPTS[0])
    config = resolve_config(ckpt.model, None, ckpt.generation_config, ckpt.tokenizer, max_new_tokens=new_tokens,
                            ignore_eos=True, do_sample=False)  # greedy: both paths must give the same tokens

    def batched() -> list[int]:
        batch, request, tokens = DecodingBatch(ckpt.model, ckpt.tokenizer), BatchRequest(prompt, config), []
        batch.add(request)
        while batch.requests:
            tokens += [e.token for e in batch.step()[request]]
        return tokens

    def alone() -> list[int]:
        return generate(ckpt.model, [prompt], config, tokenizer=ckpt.tokenizer,
                        ignore_eos=True).completions[0][0].token_ids

    times = {"generate": [], "batch": []}
    same = alone() == batched()
    for _ in range(rounds):
        for name, fn in (("generate", alone), ("batch", batched)):
            began = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - began) / new_tokens)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"new_tokens": new_tokens, "rounds": rounds, "same_tokens": same,
            "ms_per_token": {name: round(1000 * m, 3) for name, m in medians.items()},
            "batch_vs_generate": round(medians["batch"] / medians["generate"], 3)}


def run_levels(url: str, model: str, levels: list[int], max_tokens: int, lmforge: bool) -> dict:
    out = {"levels": [], "baseline": None}
    for n in levels:
        result = asyncio.run(load(url, model, n, max_tokens, lmforge))
        print(f"  {n:3d} clients: {result['tokens_per_s']:8.1f} tokens/s, TTFT p50 {result['ttft_p50_s']:.3f} s "
              f"p99 {result['ttft_p99_s']:.3f} s, ITL p50 {result['itl_p50_ms']} ms p99 {result['itl_p99_ms']} ms, "
              f"{result['complete_length']}/{result['requests']} complete", flush=True)
        out["levels"].append(result)
    base = asyncio.run(load(url, model, max(levels), max_tokens, lmforge, sequential=True))
    print(f"  one at a time ({max(levels)} requests): {base['tokens_per_s']:.1f} tokens/s", flush=True)
    out["baseline"] = base
    top = out["levels"][-1]
    out["ratio_top_vs_one_at_a_time"] = round(top["tokens_per_s"] / base["tokens_per_s"], 2)
    out["texts_equal_to_one_at_a_time"] = sum(a == b for a, b in zip(top["texts"], base["texts"]))
    for result in out["levels"] + [base]:
        result.pop("texts")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/demo/train/best", help="model folder (default: make demo's model)")
    parser.add_argument("--levels", default="1,8,32,64")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--no-anchor", action="store_true", help="skip transformers serve")
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--out", default="bench/results/serve_load.json")
    args = parser.parse_args()
    model = str(Path(args.model).resolve())
    if not Path(model, "config.json").is_file():
        print(f"{args.model} is not a model folder; run `make demo` first or pass --model", file=sys.stderr)
        return 2
    levels = [int(n) for n in args.levels.split(",")]
    load_before = os.getloadavg()
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model,
              "max_tokens": args.max_tokens, "cpu_name": cpu_name(), "cpu_flags": cpu_flags(), "cpus": os.cpu_count(),
              "torch": torch.__version__,
              "python": platform.python_version(), "load_average_before": load_before}
    lmforge_argv = [sys.executable, "-m", "lmforge.cli.main", "serve", model, "--port", "0", "--model-name", "bench",
                    "--max-batch", str(max(levels)), "--max-queue", "1024"]
    report["one_row"] = one_row(model)
    print(f"one row: {json.dumps(report['one_row'])}", flush=True)
    print("lmforge serve:", flush=True)
    server = ServerProcess(lmforge_argv)
    try:
        report["lmforge"] = run_levels(server.url, "bench", levels, args.max_tokens, True)
        if not args.no_faults:
            report["faults"] = asyncio.run(faults(server, "bench", args.max_tokens))
            print(f"  faults: {json.dumps(report['faults'])}", flush=True)
    finally:
        server.stop()
    if not args.no_anchor:
        report["anchors"] = {}
        for name, extra in (("transformers serve", []), ("transformers serve --continuous-batching",
                                                          ["--continuous-batching"])):
            print(f"{name}:", flush=True)
            port = 18000 + os.getpid() % 1000
            argv = [str(Path(sys.executable).parent / "transformers"), "serve", model, "--host", "127.0.0.1", "--port",
                    str(port), *extra]
            try:
                anchor = ServerProcess(argv, url=f"http://127.0.0.1:{port}", env={"HF_HUB_OFFLINE": "1"})
            except (RuntimeError, OSError) as exc:
                report["anchors"][name] = {"error": str(exc)[-600:]}
                print(f"  did not run: {str(exc)[-300:]}", flush=True)
                continue
            try:
                anchor_levels = sorted({levels[0], levels[-1]})  # the ends of the range: the anchors are slow
                report["anchors"][name] = run_levels(anchor.url, model, anchor_levels, args.max_tokens, False)
            except Exception as exc:  # an anchor that fails under load is a result too
                report["anchors"][name] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
                print(f"  failed: {exc}", flush=True)
            finally:
                anchor.stop()
    report["load_average_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
