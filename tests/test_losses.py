"""losses.py against references: torch's cross-entropy (with label smoothing and ignored labels), and the
labels-loss transformers computes for the same weights, for a decoder-only and an encoder-decoder model."""

import pytest
import torch
import torch.nn.functional as F

import lmforge
from hf_models import save_tiny, save_tiny_seq2seq
from lmforge.losses import IGNORE, causal_labels, cross_entropy, logits_of, sequence_logprobs, summed_nll, token_logprobs


def test_cross_entropy_matches_torch_with_smoothing_and_ignored_labels():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    labels = torch.randint(0, 11, (3, 5))
    labels[0, 3:] = IGNORE
    for smoothing in (0.0, 0.1):
        loss, nll = cross_entropy(logits, labels, smoothing)
        ref = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=smoothing)
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(nll, F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100))
        assert not nll.requires_grad
        grad, = torch.autograd.grad(loss, logits)
        ref_grad, = torch.autograd.grad(ref, logits)
        torch.testing.assert_close(grad, ref_grad)
    total, count = summed_nll(logits, labels)
    assert count == 13
    torch.testing.assert_close(total / count, cross_entropy(logits, labels)[1])
    per_token = token_logprobs(logits, labels)
    assert per_token.shape == (3, 5) and bool((per_token[0, 3:] == 0).all())
    torch.testing.assert_close(-per_token.sum() / count, total / count)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoder_only_loss_equals_transformers(tmp_path, kind):
    hf = save_tiny(kind, tmp_path / kind)
    model = lmforge.load(tmp_path / kind).model
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    input_ids, labels = causal_labels(ids, scored_from=3)  # the first 3 tokens are the prompt
    with torch.no_grad():
        ours = cross_entropy(model(input_ids), labels)[0]
        hf_labels = ids.clone()
        hf_labels[:, :3] = -100
        theirs = hf(ids, labels=hf_labels).loss
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        batch = {"input_ids": input_ids, "labels": labels}
        count = int((labels != IGNORE).sum())
        torch.testing.assert_close(-sequence_logprobs(model, batch).sum() / count, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bart", "t5"])
def test_encoder_decoder_loss_equals_transformers(tmp_path, kind):
    hf = save_tiny_seq2seq(kind, tmp_path / kind)
    model = lmforge.load(tmp_path / kind).model
    g = torch.Generator().manual_seed(2)
    source = torch.randint(3, 97, (2, 8), generator=g)
    mask = torch.ones_like(source)
    mask[1, 6:] = 0
    labels = torch.randint(3, 97, (2, 5), generator=g)
    labels[0, 4:] = IGNORE
    batch = {"input_ids": source, "attention_mask": mask, "labels": labels,
             "decoder_input_ids": model.decoder_inputs_from_labels(labels)}
    with torch.no_grad():
        ours = cross_entropy(logits_of(model, batch), labels)[0]
        theirs = hf(input_ids=source, attention_mask=mask, labels=labels).loss
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        rows = sequence_logprobs(model, batch)
        assert rows.shape == (2,)
        torch.testing.assert_close(-rows.sum() / 9, theirs, atol=1e-5, rtol=1e-5)
