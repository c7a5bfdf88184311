import os
import subprocess
import sys

import torch
from train_helpers import tiny

import lmforge
from lmforge.train import train


def test_torchrun_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path, prepared):
    common = {"max_iters": 6, "eval_interval": 3, "grad_clip": 0.5, "sample_tokens": 4, "threads": 1}
    single = train(tiny(tmp_path / "single", prepared, batch_size=8, **common), quiet=True)

    args = ["--out_dir", str(tmp_path / "ddp"), "--data.source", str(prepared), "--model.n_layer", "1",
            "--model.n_head", "2", "--model.n_embd", "32", "--model.block_size", "16", "--batch_size", "4",
            "--eval_iters", "2", "--warmup_iters", "2", "--log_interval", "2", "--device", "cpu"]
    for key, value in common.items():
        args += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "lmforge.cli.main", "train", *args],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("eval iter 6:") == 1  # rank 0 alone reports
    assert "2 process(es)" in proc.stdout

    a = lmforge.load(single.last_dir).model.state_dict()
    b = lmforge.load(tmp_path / "ddp" / "last").model.state_dict()
    for key in a:  # gradients averaged over ranks differ from one batch mean only in float rounding
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)
    assert not any(p.name.startswith(("rank", ".")) for p in (tmp_path / "ddp").iterdir())
