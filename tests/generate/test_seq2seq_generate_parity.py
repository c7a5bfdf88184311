"""Parity with transformers' generate on tiny BART, T5 and T5 v1.1: greedy and beam search through a
Seq2SeqSession give exactly the same tokens (and beam scores within 1e-4) on padded source batches."""

import pytest
import torch

import lmforge
from hf_models import SEQ2SEQ_KINDS, VOCAB, save_tiny_seq2seq
from lmforge.generate.api import generate, resolve_config
from lmforge.generate.processors import resolve_lengths
from lmforge.generate.search import StoppingCriteria, beam_search, greedy_or_sample
from lmforge.generate.session import Seq2SeqSession, open_session

NEW = 12
BEAM = dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3, early_stopping=True)


@pytest.fixture(scope="module", params=SEQ2SEQ_KINDS)
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf = save_tiny_seq2seq(request.param, folder)
    return hf, lmforge.load(folder)


def sources(seed: int = 0, lengths=(9, 4, 6)):
    """The same sources padded on the left (the session contract) and on the right (transformers' encoders)."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, VOCAB, (n,), generator=g) for n in lengths]
    width = max(lengths)
    left, right = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long)
    left_mask, right_mask = torch.zeros_like(left), torch.zeros_like(right)
    for i, row in enumerate(rows):
        left[i, width - len(row):], left_mask[i, width - len(row):] = row, 1
        right[i, :len(row)], right_mask[i, :len(row)] = row, 1
    return (left, left_mask), (right, right_mask)


def seq2seq_generate(ckpt, ids, mask, **kwargs):
    """generate() for an encoder-decoder, lengths counted on the decoder side (start token included)."""
    config = resolve_config(ckpt.model, None, ckpt.generation_config, **kwargs)
    session = open_session(ckpt.model, decoder_start_token_id=config.decoder_start_token_id)
    _, max_length = resolve_lengths(config, 1)
    with torch.inference_mode():
        logits = session.start(ids, mask, max_length - 1)
        stopping = StoppingCriteria(1, max_length - 1, config.eos_token_ids)
        if config.num_beams > 1:
            return beam_search(session, logits, config, stopping, fill=config.pad_token_id)
        return greedy_or_sample(session, logits, config, stopping, config.pad_token_id)


def frequent_tokens(ckpt, ids, mask):
    """EOS ids the model actually produces mid-way, so that stopping by EOS is exercised."""
    out = seq2seq_generate(ckpt, ids, mask, max_new_tokens=NEW, eos_token_id=[], forced_eos_token_id=None)
    return [int(out.sequences[1, 3]), int(out.sequences[0, 5])]


def assert_same_rows(ref_new, ours, pad):
    assert ref_new.shape[0] == ours.sequences.shape[0]
    for row in range(ref_new.shape[0]):
        n = int(ours.lengths[row])
        assert ref_new[row, :n].tolist() == ours.sequences[row, :n].tolist(), row
        assert (ref_new[row, n:] == pad).all(), row


def test_session_follows_the_contract(pair):
    _, ckpt = pair
    (ids, mask), _ = sources()
    session = open_session(ckpt.model, output_hidden=True)
    assert isinstance(session, Seq2SeqSession)
    with torch.inference_mode():
        logits = session.start(ids, mask, 5)
        assert logits.shape == (3, VOCAB) and logits.dtype == torch.float32
        assert session.prefix_ids.tolist() == [[ckpt.model.config.decoder_start_token_id]] * 3
        assert session.hidden.shape == (3, 1, ckpt.model.config.d_model)
        session.reorder(torch.tensor([0, 0, 2, 1]))
        assert session.batch_size == 4 and session.step(logits.argmax(-1)[[0, 0, 2, 1]]).shape == (4, VOCAB)


def test_greedy_matches_transformers(pair):
    hf, ckpt = pair
    (ids, mask), (right, right_mask) = sources(seed=1)
    eos = frequent_tokens(ckpt, ids, mask)
    kw = dict(max_new_tokens=NEW, eos_token_id=eos)
    ours = seq2seq_generate(ckpt, ids, mask, **kw)
    ref = hf.generate(input_ids=right, attention_mask=right_mask, do_sample=False, **kw)
    assert_same_rows(ref[:, 1:], ours, hf.generation_config.pad_token_id)
    assert ours.lengths.min() < NEW  # some row stopped at an EOS


@pytest.mark.parametrize("lengths", [dict(min_length=5, max_length=14), dict(min_length=3, max_new_tokens=NEW)])
def test_beam_search_matches_transformers(pair, lengths):
    hf, ckpt = pair
    (ids, mask), (right, right_mask) = sources(seed=2)
    eos = frequent_tokens(ckpt, ids, mask)
    kw = dict(BEAM, num_return_sequences=2, eos_token_id=eos, **lengths)
    ours = seq2seq_generate(ckpt, ids, mask, **kw)
    ref = hf.generate(input_ids=right, attention_mask=right_mask, do_sample=False, output_scores=True,
                      return_dict_in_generate=True, **kw)
    fill = hf.generation_config.pad_token_id or eos[0]  # transformers' filler after a finished beam
    assert_same_rows(ref.sequences[:, 1:], ours, fill)
    assert (ref.sequences_scores - ours.scores).abs().max().item() <= 1e-4


def test_public_generate_with_max_new_tokens_matches_transformers(pair):
    hf, ckpt = pair
    (ids, mask), (right, right_mask) = sources(seed=3)
    for kw in (dict(max_new_tokens=NEW), dict(BEAM, max_new_tokens=NEW, min_length=4)):
        ours = generate(ckpt, ids, attention_mask=mask, **kw).output
        ref = hf.generate(input_ids=right, attention_mask=right_mask, do_sample=False, **kw)
        assert_same_rows(ref[:, 1:], ours, hf.generation_config.pad_token_id)
