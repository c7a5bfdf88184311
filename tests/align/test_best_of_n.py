"""Best-of-n: the candidate the reward model scores highest, from the Python API and `lmforge generate --best-of`,
for decoder-only and encoder-decoder policies."""

from __future__ import annotations

import json

import pytest
import torch
from align_helpers import tiny_policy

from lmforge.align import best_of_n
from lmforge.align.reward_model import ScalarHead, load_reward_model, save_reward_model, score_texts
from lmforge.hub.hf import load_folder


def reward_model_on(policy, folder):
    checkpoint = load_folder(policy)
    torch.manual_seed(3)
    save_reward_model(ScalarHead(checkpoint.model), folder, checkpoint.tokenizer)
    return folder


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_best_of_n_keeps_the_highest_reward(tmp_path, kind):
    policy = tiny_policy(tmp_path / "policy", kind)
    rm = reward_model_on(policy, tmp_path / "rm")
    picks = best_of_n(policy, rm, ["say a:", "say b:"], n=6, seed=0, max_new_tokens=5)
    model, tok = load_reward_model(rm)
    for pick in picks:
        assert len(pick.candidates) == 6 and len({c.text for c in pick.candidates}) > 1
        rewards = score_texts(model, tok, [pick.prompt] * 6, [c.text for c in pick.candidates])
        assert [c.reward for c in pick.candidates] == pytest.approx(rewards, abs=1e-6)
        assert pick.best.reward == max(rewards)


def test_cli_generate_best_of(tmp_path, capsys):
    from lmforge.cli.main import main

    policy = tiny_policy(tmp_path / "policy")
    rm = reward_model_on(policy, tmp_path / "rm")
    args = ["generate", str(policy), "--prompt", "say a:", "--max-new-tokens", "5", "--seed", "1"]
    assert main(args + ["--best-of", "4", "--reward-model", str(rm), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["candidates"]) == 4 and out["best"]["reward"] == max(c["reward"] for c in out["candidates"])
    assert main(args + ["--best-of", "4"]) == 2
    assert "--reward-model" in capsys.readouterr().err
    assert main(args + ["--best-of", "4", "--reward-model", str(policy)]) == 2  # a language model, not a reward model
    assert "not a reward model" in capsys.readouterr().err
