"""DPO: the losses against TRL's DPOTrainer (run on the same weights and batch) and its formulas, the three
references giving the same loss, implicit-reward accuracy rising on synthetic pairs, encoder-decoder policies."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from align_helpers import synthetic_pairs, tiny_dpo_settings, tiny_policy, write_jsonl

from lmforge.align.dpo import dpo_loss, train_dpo


def trl_formula(pc, pr, rc, rr, beta, loss_type, nc, nr):
    """TRL's DPOTrainer._compute_loss (trl/trainer/dpo_trainer.py, trl 1.16), transcribed: reverse-KL scores
    (the log-ratios), then per-sequence losses."""
    chosen, rejected = pc - rc, pr - rr
    delta = chosen - rejected
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    ipo_delta = chosen / nc.clamp(min=1.0) - rejected / nr.clamp(min=1.0)
    return (ipo_delta - 1 / (2 * beta)) ** 2


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_losses_equal_trl_formulas(loss_type):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-torch.rand(6, generator=g, dtype=torch.float64) * 20 for _ in range(4))
    nc, nr = torch.tensor([3., 5, 1, 7, 2, 9], dtype=torch.float64), torch.tensor([4., 2, 6, 1, 3, 8], dtype=torch.float64)
    for beta in (0.1, 0.5):
        ours, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta, loss_type, nc, nr)
        assert torch.allclose(ours, trl_formula(pc, pr, rc, rr, beta, loss_type, nc, nr), atol=1e-12)
        assert torch.allclose(chosen, beta * (pc - rc)) and torch.allclose(rejected, beta * (pr - rr))


def test_loss_on_a_batch_equals_trl_dpo_trainer(tmp_path):
    """TRL's own DPOTrainer computes the loss of a tokenized batch with a tiny GPT-2; lmforge's log-probabilities
    (the same weights, loaded by lmforge) and dpo_loss give the same number."""
    pytest.importorskip("trl")
    import transformers as tf
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from hf_models import save_tiny_with_tokenizer
    from lmforge.hub.hf import load_folder
    from lmforge.losses import token_logprobs

    hf_model, _ = save_tiny_with_tokenizer(tmp_path / "policy")
    hf_tok = tf.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "policy" / "tokenizer.json"),
                                        eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    rows = [{"prompt": "The quick brown", "chosen": " fox jumps", "rejected": " dog naïve façade"},
            {"prompt": "Café crème, naïve", "chosen": " façade", "rejected": " le cœur a ses"},
            {"prompt": "日本語", "chosen": "のテキスト", "rejected": " over the lazy dog"}]
    hf_model.config.pad_token_id = hf_tok.pad_token_id  # DPOTrainer sets the policy's; the reference gets the same
    ref = copy.deepcopy(hf_model).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a reference that differs from the policy, so the log-ratios are not zero
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref.save_pretrained(tmp_path / "ref")
    results = {}
    for loss_type in ("sigmoid", "hinge", "ipo"):
        args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=3, beta=0.3,
                         loss_type=loss_type, report_to=[], use_cpu=True, max_length=None, seed=0,
                         bf16=False, fp16=False)
        trainer = DPOTrainer(model=hf_model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=hf_tok)
        batch = next(iter(trainer.get_train_dataloader()))
        hf_model.eval()
        with torch.no_grad():
            theirs = trainer.compute_loss(hf_model, batch).item()
        results[loss_type] = (batch, theirs)
    policy, reference = load_folder(tmp_path / "policy").model, load_folder(tmp_path / "ref").model
    for loss_type, (batch, theirs) in results.items():
        ids, mask, completion = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        labels = ids[:, 1:].masked_fill(completion[:, 1:] == 0, -100)
        with torch.no_grad():
            logps = [token_logprobs(m(ids[:, :-1], attention_mask=mask[:, :-1]), labels).sum(-1)
                     for m in (policy, reference)]
        (pc, pr), (rc, rr) = logps[0].chunk(2), logps[1].chunk(2)
        nc, nr = completion.sum(-1).float().chunk(2)
        ours, _, _ = dpo_loss(pc, pr, rc, rr, 0.3, loss_type, nc, nr)
        assert ours.mean().item() == pytest.approx(theirs, abs=1e-5), loss_type


def test_the_three_references_give_the_same_loss(tmp_path):
    """A LoRA policy whose reference is a frozen copy, the adapter-less base, or precomputed log-probabilities:
    the same losses at every evaluation and every logged step."""
    policy = tiny_policy(tmp_path / "policy")
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(48, seed=0))
    val = write_jsonl(tmp_path / "val.jsonl", synthetic_pairs(16, seed=1))
    runs = {}
    for reference in ("copy", "base", "precomputed"):
        settings = tiny_dpo_settings(tmp_path / reference, policy, train, val, reference=reference, max_iters=4,
                                     eval_interval=2, log_interval=1, **{"adapter.method": "lora", "adapter.r": 4,
                                                                         "adapter.targets": "c_attn"})
        train_dpo(settings, quiet=True)
        metrics = [json.loads(line) for line in (tmp_path / reference / "metrics.jsonl").read_text().splitlines()]
        steps = [json.loads(line) for line in (tmp_path / reference / "log.jsonl").read_text().splitlines()]
        runs[reference] = ([m["val_loss"] for m in metrics], [s["loss"] for s in steps])
    assert runs["copy"][0][-1] != pytest.approx(runs["copy"][0][0])  # the policy moved
    for reference in ("base", "precomputed"):
        assert runs[reference][0] == pytest.approx(runs["copy"][0], abs=1e-6)
        assert runs[reference][1] == pytest.approx(runs["copy"][1], abs=1e-6)


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_dpo_raises_implicit_reward_accuracy(tmp_path, kind):
    policy = tiny_policy(tmp_path / "policy", kind)
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(400, seed=0))
    val = write_jsonl(tmp_path / "val.jsonl", synthetic_pairs(100, seed=1))
    steps = 40 if kind == "gpt2" else 20
    result = train_dpo(tiny_dpo_settings(tmp_path / "run", policy, train, val, max_iters=steps, eval_interval=steps),
                       quiet=True)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = metrics[0], metrics[-1]
    assert first["val_accuracy"] == 0.0 and first["margin"] == 0.0  # policy = reference: every reward is 0
    assert last["val_accuracy"] >= 0.65 and last["margin"] > 0 and last["val_loss"] < first["val_loss"], last
    assert {"chosen_reward", "rejected_reward"} <= set(last) and result.best_dir.is_dir()


def test_dpo_without_a_policy_exits_2(tmp_path, capsys):
    from lmforge.cli.main import main

    train = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(8))
    assert main(["dpo", "--data.train", str(train), "--out_dir", str(tmp_path / "run")]) == 2
    assert "set init_from" in capsys.readouterr().err
