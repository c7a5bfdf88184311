"""Parity with transformers' generate on the same weights: greedy and beam search over left-padded
batches give exactly the same tokens (and beam scores within 1e-4); batching changes nothing."""

import pytest
import torch

import lmforge
from hf_models import left_padded_batch, save_tiny
from lmforge.generate.api import generate

KINDS = ["gpt2", "opt", "llama", "qwen2"]
NEW = 12
BEAM_CASES = [  # (early_stopping, length_penalty, no_repeat_ngram_size, num_return_sequences)
    (False, 1.0, 0, 1),
    (True, 1.0, 0, 2),
    ("never", 1.0, 0, 3),
    (False, 2.0, 2, 2),
    (True, -0.5, 3, 1),
    ("never", 0.0, 2, 4),
]


@pytest.fixture(scope="module", params=KINDS)
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf = save_tiny(request.param, folder)
    return hf, lmforge.load(folder).model


def frequent_tokens(model, ids, mask):
    """EOS ids that the model actually produces mid-way, so that stopping by EOS is exercised."""
    out = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, ignore_eos=True).output.sequences
    return [2, int(out[1, 3]), int(out[0, 5])]


def assert_same_rows(ref_new, ours, fill):
    """Our rows equal transformers' up to each row's length; transformers only pads after it."""
    assert ref_new.shape[0] == ours.sequences.shape[0]
    for row in range(ref_new.shape[0]):
        n = int(ours.lengths[row])
        assert ref_new[row, :n].tolist() == ours.sequences[row, :n].tolist(), row
        assert (ref_new[row, n:] == fill).all(), row


def test_greedy_matches_transformers(pair):
    hf, model = pair
    for seed in range(2):
        ids, mask = left_padded_batch(seed=seed)
        eos = frequent_tokens(model, ids, mask)
        ours = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0)
        ref = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, eos_token_id=eos,
                          pad_token_id=0)
        assert_same_rows(ref[:, ids.shape[1]:], ours.output, fill=0)
        assert ours.output.lengths.min() < NEW  # some row stopped at an EOS


@pytest.mark.parametrize("case", BEAM_CASES, ids=lambda c: f"es={c[0]}-lp={c[1]}-ngram={c[2]}-n={c[3]}")
def test_beam_search_matches_transformers(pair, case):
    hf, model = pair
    early_stopping, length_penalty, ngram, n = case
    ids, mask = left_padded_batch(seed=3)
    eos = frequent_tokens(model, ids, mask)
    kw = dict(num_beams=4, early_stopping=early_stopping, length_penalty=length_penalty,
              no_repeat_ngram_size=ngram, num_return_sequences=n, max_new_tokens=NEW, eos_token_id=eos,
              pad_token_id=0)
    ours = generate(model, ids, attention_mask=mask, **kw).output
    ref = hf.generate(ids, attention_mask=mask, do_sample=False, output_scores=True, return_dict_in_generate=True,
                      **kw)
    assert_same_rows(ref.sequences[:, ids.shape[1]:], ours, fill=eos[0])
    assert (ref.sequences_scores - ours.scores).abs().max().item() <= 1e-4


def test_seeded_sampling_draws_as_transformers(pair):
    """The same global seed gives transformers' samples (processors, warpers and the draw agree)."""
    hf, model = pair
    ids, mask = left_padded_batch(seed=4)
    kw = dict(do_sample=True, top_k=20, top_p=0.9, temperature=0.7, repetition_penalty=1.3, num_return_sequences=2,
              max_new_tokens=NEW, pad_token_id=0)
    torch.manual_seed(11)
    ours = generate(model, ids, attention_mask=mask, ignore_eos=True, **kw).output.sequences
    torch.manual_seed(11)
    ref = hf.generate(ids, attention_mask=mask, eos_token_id=None, **kw)
    assert torch.equal(ours, ref[:, ids.shape[1]:])


@pytest.mark.parametrize("kw", [dict(), dict(num_beams=3, num_return_sequences=2),
                                dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5),
                                dict(penalty_alpha=0.6, top_k=4)],
                         ids=["greedy", "beam", "group_beam", "contrastive"])
def test_left_padded_batch_equals_each_prompt_alone(pair, kw):
    _, model = pair
    ids, mask = left_padded_batch(seed=5)
    kw = dict(kw, max_new_tokens=8, eos_token_id=[2], pad_token_id=0)
    batched = generate(model, ids, attention_mask=mask, **kw)
    for row in range(ids.shape[0]):
        alone = generate(model, [ids[row][mask[row].bool()].tolist()], **kw)
        assert [c.token_ids for c in alone.completions[0]] == [c.token_ids for c in batched.completions[row]]
        assert torch.allclose(torch.tensor([c.score for c in alone.completions[0]]),
                              torch.tensor([c.score for c in batched.completions[row]]), atol=1e-4)
