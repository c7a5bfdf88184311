"""What the one training loop does for every task: finetune resumes bit for bit after SIGKILL, a schedule
planned on a time budget, evaluations on a clock, non-finite steps skipped, FSDP under torchrun."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import killed_at_step, tiny

import lmforge
from lmforge.train import finetune, train
from lmforge.train.lm import LanguageModelling

PAIRS = [{"text": f"the {a} {b} sat on the {c}", "summary": f"{a} {c}"}
         for a in ("cat", "dog", "bird", "fox") for b in ("red", "big") for c in ("mat", "hat", "rug")]


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS), encoding="utf-8")
    return str(path)


def pair_settings(out_dir, data: str, **extra) -> dict:
    """A tiny BART with dropout (so the restored RNG state matters), a copy pass and several batches an epoch."""
    return {"out_dir": str(out_dir), "data.train": data, "data.val": data, "data.source_field": "text",
            "data.target_field": "summary", "data.vocab_size": 300, "data.max_source_length": 24,
            "data.max_target_length": 12, "model.preset": "tiny-bart", "model.dropout": 0.1, "model.d_model": 32,
            "model.n_head": 2, "model.d_ff": 64, "model.n_layer": 1, "batch_tokens": 200, "max_iters": 10,
            "eval_interval": 3, "warmup_iters": 2, "copy_fraction": 0.5, "gen_examples": 0, "num_beams": 1,
            "device": "cpu", "threads": 2, **extra}


def weights(folder: Path) -> dict:
    return lmforge.load(folder).model.state_dict()


def test_finetune_sigkill_then_resume_is_bitwise_identical(tmp_path, pair_file):
    reference = finetune(pair_settings(tmp_path / "ref", pair_file), quiet=True)
    run = tmp_path / "run"
    killed_at_step("finetune", pair_settings(run, pair_file, log_interval=1), 8)
    assert json.loads((run / "last" / "trainer_state.json").read_text())["iter"] == 6
    resumed = finetune(pair_settings(run, pair_file, log_interval=1), resume=True, quiet=True)
    assert resumed.iters == 10
    wa, wb = weights(reference.last_dir), weights(run / "last")
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ from the uninterrupted run"
    timings = ("tokens_per_sec", "elapsed_s", "eval_s")
    same = {k: v for k, v in resumed.last_eval.items() if k not in timings}
    assert same == {k: v for k, v in reference.last_eval.items() if k not in timings}


def test_cli_finetune_resume_and_the_old_positional_config(tmp_path, pair_file, capsys):
    from lmforge.cli.main import main
    from lmforge.train.config import to_yaml

    config = tmp_path / "run.yaml"
    config.write_text(to_yaml(pair_settings(tmp_path / "run", pair_file, max_iters=3)))
    assert main(["finetune", str(config), "--quiet"]) == 0  # today's README form still works
    assert main(["finetune", "--config", str(config), "--max_iters", "5", "--resume", "--quiet"]) == 0
    state = json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text())
    assert state["iter"] == 5
    assert main(["finetune", str(config), "other.yaml"]) == 2
    assert "--config FILE.yaml" in capsys.readouterr().err


def test_schedule_planned_on_a_time_budget(tmp_path, prepared):
    result = train(tiny(tmp_path / "run", prepared, max_iters=None, max_minutes=0.1, warmup_iters=1, log_interval=1,
                        eval_interval=10**6, eval_minutes=0.02, sample_tokens=0, min_lr=1e-5), quiet=True)
    assert result.stopped == "max_minutes" and result.iters >= 3  # however loaded the machine
    log = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in log[1:]]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.5 * 1e-3  # decays over the time
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) >= 3 and metrics[-1]["iter"] == result.iters  # on the clock, and at the end


def test_a_step_with_a_non_finite_loss_is_skipped(tmp_path, prepared, monkeypatch):
    real_loss, calls = LanguageModelling.loss, []

    def loss(self, module, batch):
        calls.append(1)
        value, logged, tokens = real_loss(self, module, batch)
        return (value * math.nan, logged, tokens) if len(calls) == 3 else (value, logged, tokens)

    monkeypatch.setattr(LanguageModelling, "loss", loss)
    result = train(tiny(tmp_path / "run", prepared, max_iters=4, sample_tokens=0), quiet=True)
    assert result.iters == 4 and any("skipped 1 step(s)" in n for n in result.notes)
    assert all(torch.isfinite(p).all() for p in weights(result.last_dir).values())


def torchrun(args: list[str], verb: str = "train") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "lmforge.cli.main", verb, *args], capture_output=True, text=True, timeout=300,
                          env=env, check=False)


def test_fsdp_two_gloo_processes_match_one_process_and_resume(tmp_path, prepared):
    common = {"max_iters": 6, "eval_interval": 3, "grad_clip": 0.5, "sample_tokens": 4, "threads": 1,
              "lr_decay_iters": 6}
    args = ["--out_dir", str(tmp_path / "fsdp"), "--data.source", str(prepared), "--model.n_layer", "2",
            "--model.n_head", "2", "--model.n_embd", "32", "--model.block_size", "16", "--batch_size", "4",
            "--eval_iters", "2", "--warmup_iters", "2", "--log_interval", "2", "--device", "cpu",
            "--distributed", "fsdp"]
    args += [a for key, value in common.items() if key != "max_iters" for a in (f"--{key}", str(value))]
    proc = torchrun(args + ["--max_iters", "3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es), FSDP" in proc.stdout and "sample at iter 3" in proc.stdout
    proc = torchrun(args + ["--max_iters", "6", "--resume"])  # the optimizer state gathered whole, and sharded again
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("eval iter 6:") == 1
    single = train(tiny(tmp_path / "single", prepared, batch_size=8, **common, **{"model.n_layer": 2}), quiet=True)
    a = weights(single.last_dir)
    b = weights(tmp_path / "fsdp" / "last")  # an ordinary, whole Hugging Face folder
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)


def test_pairs_under_fsdp_generate_on_rank_zero(tmp_path, pair_file):
    settings = pair_settings(tmp_path / "run", pair_file, max_iters=4, gen_examples=4, max_new_tokens=8, metrics="rouge",
                             best_metric="rouge1", copy_fraction=0.0, threads=1, distributed="fsdp")
    args = [a for key, value in settings.items() for a in (f"--{key}", str(value))]
    proc = torchrun(args, verb="finetune")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "rouge1" in metrics[-1] and metrics[-1]["iter"] == 4
    assert lmforge.load(tmp_path / "run" / "best").model.is_encoder_decoder
