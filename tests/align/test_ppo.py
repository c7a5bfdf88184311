"""PPO: GAE, the KL estimators and the clipped losses against direct formulas; a programmatic reward raised within a
few updates with the KL bounded; encoder-decoder policies; LoRA policies; bad input (no reward model, another
tokenizer)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from align_helpers import tiny_policy

from lmforge.align.ppo import gae, kl_penalty, ppo_losses, train_ppo


def test_gae_matches_the_recursion_written_out():
    rewards = torch.tensor([[0.1, -0.2, 1.0, 0.0], [0.3, 2.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 0.0], [0.2, 0.1, 0.0, 0.0]])
    mask = torch.tensor([[1., 1, 1, 0], [1, 1, 0, 0]])
    gamma, lam = 0.9, 0.8
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for row in range(2):
        n = int(mask[row].sum())
        expected, running = [0.0] * n, 0.0
        for t in reversed(range(n)):
            nxt = values[row, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[row, t].item() + gamma * nxt - values[row, t].item()
            running = delta + gamma * lam * running
            expected[t] = running
        assert advantages[row, :n].tolist() == pytest.approx(expected, abs=1e-6)
        assert advantages[row, n:].abs().sum() == 0
    assert torch.allclose(returns, advantages + values)


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -1.0, -0.5])
    assert torch.allclose(kl_penalty(logp, ref, "k1"), logp - ref)
    r = (ref - logp).exp()
    assert torch.allclose(kl_penalty(logp, ref, "k3"), r - 1 - (ref - logp))
    assert (kl_penalty(logp, ref, "k3") >= 0).all()


def test_clipped_losses():
    logp, old = torch.tensor([[-1.0, -0.5]]), torch.tensor([[-1.5, -0.4]])
    adv, mask = torch.tensor([[1.0, -2.0]]), torch.ones(1, 2)
    values, old_values, returns = torch.tensor([[0.9, 0.0]]), torch.tensor([[0.5, 0.1]]), torch.tensor([[1.0, -1.0]])
    policy_loss, value_loss, stats = ppo_losses(logp, old, adv, values, old_values, returns, mask, 0.2, 0.2)
    ratio = (logp - old).exp()
    expected_pg = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
    clipped = torch.tensor([[0.7, 0.0]])  # old + clamp(v - old, -0.2, 0.2)
    expected_vf = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2).mean()
    assert policy_loss.item() == pytest.approx(expected_pg.item()) and value_loss.item() == pytest.approx(expected_vf.item())
    assert stats["clipfrac"] == pytest.approx(0.5)  # exp(0.5) is outside [0.8, 1.2], exp(-0.1) inside


def share_of_a(prompts, responses):
    return [r.count("a") / max(len(r), 1) for r in responses]


def ppo_settings(tmp_path, policy, **overrides):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("say a:\nsay b:\nsay c:\nsay d:\n", encoding="utf-8")
    base = {"out_dir": str(tmp_path / "run"), "init_from": str(policy), "prompts": str(prompts), "device": "cpu",
            "rollout_batch_size": 16, "ppo_epochs": 2, "num_minibatches": 2, "max_new_tokens": 6, "max_iters": 24,
            "eval_interval": 4, "log_interval": 4, "learning_rate": 1e-2, "min_lr": 1e-3, "kl_coef": 0.02,
            "vf_coef": 0.5}
    return {**base, **overrides}


def test_ppo_raises_a_programmatic_reward_with_the_kl_bounded(tmp_path):
    policy = tiny_policy(tmp_path / "policy")
    train_ppo(ppo_settings(tmp_path, policy), reward_fn=share_of_a, quiet=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = records[0], records[-1]
    assert first["iter"] == 0 and last["iter"] == 24 and len(records) == 7  # one per update, and the start
    assert last["reward_mean"] > first["reward_mean"] + 0.2, [r["reward_mean"] for r in records]
    assert 0 < last["kl"] < 10 and first["kl"] == pytest.approx(0, abs=1e-4)
    for key in ("entropy", "clipfrac", "value_loss", "approx_kl", "response_length", "kl_coef", "policy_loss"):
        assert key in last
    samples = (tmp_path / "run" / "samples.txt").read_text()
    assert "say" in samples and "reward" in samples
    assert (tmp_path / "run" / "best" / "value" / "config.json").is_file()


def test_ppo_lora_policy_adaptive_kl_k3_ptx(tmp_path):
    policy = tiny_policy(tmp_path / "policy")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("say a: aaaa say b: bbbb " * 20, encoding="utf-8")
    settings = ppo_settings(tmp_path, policy, max_iters=8, **{
        "adapter.method": "lora", "adapter.r": 4, "adapter.targets": "c_attn", "adaptive_kl": True,
        "target_kl": 0.5, "kl_horizon": 50, "kl_estimator": "k3", "ptx_coef": 0.5, "ptx_data": str(corpus),
        "ptx_block_size": 8})
    train_ppo(settings, reward_fn=share_of_a, quiet=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kl_coef"] != records[0]["kl_coef"] and "ptx_loss" in records[-1]
    assert (tmp_path / "run" / "best" / "adapter_config.json").is_file()


def test_ppo_encoder_decoder_policy(tmp_path):
    policy = tiny_policy(tmp_path / "policy", "t5")
    train_ppo(ppo_settings(tmp_path, policy, max_iters=4), reward_fn=share_of_a, quiet=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[-1]["response_length"] > 0


def test_ppo_refuses_without_reward_model_and_with_another_tokenizer(tmp_path, capsys):
    from align_helpers import synthetic_pairs, tiny_reward_settings, write_jsonl

    from lmforge.align.reward import train_reward
    from lmforge.cli.main import main

    policy = tiny_policy(tmp_path / "policy")
    settings = ppo_settings(tmp_path, policy)
    args = ["ppo"] + [f"--{k}={v}" for k, v in settings.items()]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "PPO needs a reward" in err and "Traceback" not in err
    pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(32))
    rm = train_reward(tiny_reward_settings(tmp_path / "rm", pairs, pairs, max_iters=1, eval_interval=1), quiet=True)
    assert main(args + [f"--reward_model={rm.best_dir}"]) == 2  # a BPE tokenizer trained on the pairs
    assert "another tokenizer" in capsys.readouterr().err


def test_ppo_against_a_reward_model_from_the_cli(tmp_path):
    """The InstructGPT path: a reward model trained from the policy (same tokenizer), PPO against it from the
    command line, the value model started from the reward model."""
    from align_helpers import synthetic_pairs, tiny_reward_settings, write_jsonl

    from lmforge.align.reward import train_reward
    from lmforge.cli.main import main

    policy = tiny_policy(tmp_path / "policy")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(32))
    rm = train_reward(tiny_reward_settings(tmp_path / "rm", pairs, pairs, init_from=str(policy), max_iters=2,
                                           eval_interval=2), quiet=True)
    settings = ppo_settings(tmp_path, policy, max_iters=4, reward_model=str(rm.best_dir))
    assert main(["ppo", "--quiet"] + [f"--{k}={v}" for k, v in settings.items()]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(math.isfinite(r["reward_mean"]) for r in records)
