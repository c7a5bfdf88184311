"""Reward models: the Bradley-Terry loss, equal scores in transformers' AutoModelForSequenceClassification, a
synthetic preference learned to >= 95 %, encoder-decoder reward models, the CLI (reward, score --json)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from align_helpers import synthetic_pairs, tiny_reward_settings, write_jsonl

from hf_models import save_tiny, tiny_hf_seq2seq
from lmforge.align.reward import bradley_terry, train_reward
from lmforge.align.reward_model import ScalarHead, load_reward_model, save_reward_model
from lmforge.hub.hf import load_folder


def test_bradley_terry_formula():
    chosen, rejected = torch.tensor([1.0, 0.2, -0.5]), torch.tensor([0.0, 0.4, -1.5])
    margin, weight = torch.tensor([0.5, 0.0, 1.0]), torch.tensor([1.0, 0.5, 0.25])
    expected = [-math.log(1 / (1 + math.exp(-(c - r - m)))) for c, r, m in zip(chosen.tolist(), rejected.tolist(),
                                                                               margin.tolist())]
    weighted = sum(e * w for e, w in zip(expected, weight.tolist())) / weight.sum().item()
    assert bradley_terry(chosen, rejected, margin, weight).item() == pytest.approx(weighted, rel=1e-6)
    centered = bradley_terry(chosen, rejected, center=0.1).item()
    plain = sum(-math.log(1 / (1 + math.exp(-(c - r)))) for c, r in zip(chosen.tolist(), rejected.tolist())) / 3
    assert centered == pytest.approx(plain + 0.1 * ((chosen + rejected) ** 2).mean().item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["gpt2", "opt", "llama", "mistral", "qwen2"])
def test_transformers_loads_the_reward_model_with_equal_scores(tmp_path, kind):
    import transformers as tf

    save_tiny(kind, tmp_path / "lm")
    torch.manual_seed(0)
    model = ScalarHead(load_folder(tmp_path / "lm").model).eval()
    save_reward_model(model, tmp_path / "rm")
    theirs = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").float().eval()
    assert theirs.config.num_labels == 1 and type(theirs).__name__.endswith("ForSequenceClassification")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    for row, length in ((1, 6), (2, 3)):  # right padding with the pad id (0), which no real token uses
        ids[row, length:] = 0
        mask[row, length:] = 0
    with torch.no_grad():
        ours = model(ids, mask)
        ref = theirs(input_ids=ids, attention_mask=mask).logits[:, 0]
    assert torch.allclose(ours, ref, atol=1e-5), (ours, ref)
    again, _ = load_reward_model(tmp_path / "rm")
    with torch.no_grad():
        assert torch.allclose(again(ids, mask), ours, atol=1e-6)


def test_encoder_decoder_reward_model_saves_and_loads(tmp_path):
    body = tiny_hf_seq2seq("t5")
    body.save_pretrained(tmp_path / "lm")
    torch.manual_seed(0)
    model = ScalarHead(load_folder(tmp_path / "lm").model).eval()
    save_reward_model(model, tmp_path / "rm")
    again, _ = load_reward_model(tmp_path / "rm")
    src = torch.randint(3, 97, (2, 7))
    dec = torch.randint(3, 97, (2, 5))
    dec_mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    with torch.no_grad():
        a = model(src, torch.ones_like(src), dec, dec_mask)
        b = again(src, torch.ones_like(src), dec, dec_mask)
        # the padded row's reward is that of its unpadded prefix
        alone = model(src[1:], torch.ones_like(src[1:]), dec[1:, :3])
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a[1], alone[0], atol=1e-5)


def test_reward_model_learns_a_synthetic_preference(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(600, seed=0))
    val = write_jsonl(tmp_path / "val.jsonl", synthetic_pairs(200, seed=1))
    result = train_reward(tiny_reward_settings(tmp_path / "run", train, val, max_iters=200, eval_interval=100),
                          quiet=True)
    assert result.best_metric == "val_accuracy" and result.best_value >= 0.95, result.last_eval
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"val_accuracy", "val_margin", "val_loss"} <= set(records[-1])
    assert records[0]["val_accuracy"] < 0.8  # it was learned, not there from the start


def test_encoder_decoder_reward_training_runs(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(64, seed=0))
    settings = tiny_reward_settings(tmp_path / "run", train, train, max_iters=4, eval_interval=2,
                                    **{"model.preset": "tiny-t5", "model.n_layer": 1})
    result = train_reward(settings, quiet=True)
    model, tok = load_reward_model(result.best_dir)
    assert model.is_encoder_decoder and tok is not None and 0 <= result.last_eval["val_accuracy"] <= 1


def test_cli_reward_then_score(tmp_path, capsys):
    from lmforge.align.reward_model import score_texts
    from lmforge.cli.main import main

    train = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(64, seed=0))
    settings = tiny_reward_settings(tmp_path / "run", train, train, max_iters=2, eval_interval=2)
    args = ["reward", "--quiet"] + [f"--{k}={v}" for k, v in settings.items()]
    assert main(args) == 0
    capsys.readouterr()
    best = tmp_path / "run" / "best"
    assert main(["score", str(best), "--prompt", "say a:", "--text", " aaa", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    model, tok = load_reward_model(best)
    assert set(printed) == {"reward"}
    assert printed["reward"] == pytest.approx(score_texts(model, tok, ["say a:"], [" aaa"])[0], abs=1e-6)


def test_missing_fields_exit_2_from_the_cli(tmp_path, capsys):
    from lmforge.cli.main import main

    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x", "chosen": "y"}])
    code = main(["reward", "--data.train", str(path), "--data.val", str(path), "--out_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "line 1" in err and "rejected" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "best").exists()


def test_a_resumed_reward_run_continues_exactly(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(40, seed=0))
    straight = tiny_reward_settings(tmp_path / "a", train, train, max_iters=6, eval_interval=3, batch_size=8)
    train_reward(straight, quiet=True)
    first = {**straight, "out_dir": str(tmp_path / "b"), "max_iters": 3}
    train_reward(first, quiet=True)
    train_reward({**first, "max_iters": 6}, resume=True, quiet=True)
    losses = [[json.loads(line)["val_loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("a", "b")]
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_scoring_fits_a_long_prompt_to_the_context(tmp_path):
    from align_helpers import tiny_policy

    from lmforge.align.reward_model import score_texts

    checkpoint = load_folder(tiny_policy(tmp_path / "policy"))  # block_size 48, one token per character
    torch.manual_seed(0)
    model = ScalarHead(checkpoint.model).eval()
    prompt = "say a: " * 20
    long, cut = score_texts(model, checkpoint.tokenizer, [prompt, prompt[-43:]], [" aaa", " aaa"])
    assert long == pytest.approx(cut, abs=1e-6)  # BOS + the prompt's last 43 characters + 4 = 48
