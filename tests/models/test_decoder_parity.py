"""Parity with transformers: the same weights give the same logits, in one pass and through the KV cache."""

import pytest
import torch

import lmforge
from hf_models import hf_position_ids, left_padded_batch, save_tiny

KINDS = ["gpt2", "opt", "llama", "llama-tied", "mistral", "qwen2"]
TOL = 1e-4


def hf_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=hf_position_ids(mask)).logits


def max_diff_on_real_tokens(a, b, mask):
    return (a - b).abs()[mask.bool()].max().item()


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_transformers_with_left_padding(kind, tmp_path):
    hf = save_tiny(kind, tmp_path / kind)
    model, _ = lmforge.load(tmp_path / kind)
    ids, mask = left_padded_batch()
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
    diff = max_diff_on_real_tokens(ours, hf_logits(hf, ids, mask), mask)
    print(f"parity {kind}: max abs diff {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("kind", KINDS)
def test_kv_cache_steps_match_full_forward(kind, tmp_path):
    hf = save_tiny(kind, tmp_path / kind)
    model, _ = lmforge.load(tmp_path / kind)
    ids, mask = left_padded_batch(seed=1)
    expected = hf_logits(hf, ids, mask)
    prefill = 7
    cache = model.new_cache(ids.shape[0], ids.shape[1])
    with torch.no_grad():
        steps = [model(ids[:, :prefill], attention_mask=mask[:, :prefill], cache=cache)]
        for t in range(prefill, ids.shape[1]):
            steps.append(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache))
    ours = torch.cat(steps, dim=1)
    assert max_diff_on_real_tokens(ours, expected, mask) <= TOL


@pytest.mark.parametrize("kind", KINDS)
def test_a_ready_4d_mask_with_position_ids_matches_through_the_cache(kind, tmp_path):
    """A boolean mask (B, 1, T, past + T) is used as given, as transformers accepts one."""
    hf = save_tiny(kind, tmp_path / kind)
    model, _ = lmforge.load(tmp_path / kind)
    ids, mask = left_padded_batch(seed=3)
    B, L = ids.shape
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    ready = (causal & mask[:, None, :].bool()) | torch.eye(L, dtype=torch.bool)  # a padding query sees itself
    ready, positions = ready[:, None], hf_position_ids(mask)
    cache = model.new_cache(B, L)
    with torch.no_grad():
        steps = [model(ids[:, :5], attention_mask=ready[:, :, :5, :5], position_ids=positions[:, :5], cache=cache)]
        for t in range(5, L):
            steps.append(model(ids[:, t:t + 1], attention_mask=ready[:, :, t:t + 1, :t + 1],
                               position_ids=positions[:, t:t + 1], cache=cache))
    assert max_diff_on_real_tokens(torch.cat(steps, dim=1), hf_logits(hf, ids, mask), mask) <= TOL


@pytest.mark.parametrize("kind", KINDS)
def test_export_reloads_in_transformers_with_same_logits(kind, tmp_path):
    from transformers import AutoModelForCausalLM

    hf = save_tiny(kind, tmp_path / "src")
    model, _ = lmforge.load(tmp_path / "src")
    lmforge.save(model, tmp_path / "out")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out").float().eval()
    ids, mask = left_padded_batch(seed=2)
    assert max_diff_on_real_tokens(hf_logits(again, ids, mask), hf_logits(hf, ids, mask), mask) <= TOL
    reloaded, _ = lmforge.load(tmp_path / "out")
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_structure_covers_gqa_tied_untied_and_qwen_bias(tmp_path):
    configs = {k: lmforge.load(save_tiny(k, tmp_path / k) and tmp_path / k).model.config for k in KINDS}
    assert configs["llama"].n_kv_head < configs["llama"].n_head
    assert configs["mistral"].n_kv_head == 1
    assert not configs["llama"].tie_word_embeddings and configs["llama-tied"].tie_word_embeddings
    assert configs["qwen2"].qkv_bias and not configs["qwen2"].bias
