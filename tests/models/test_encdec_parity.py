"""Encoder-decoder parity with transformers: BART, T5 v1.0 and T5 v1.1 give the same logits, in one pass
and step by step through the cache, and survive an export that transformers reloads."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmforge
from hf_models import SEQ2SEQ_KINDS, save_tiny_seq2seq, seq2seq_batch
from lmforge.config import encdec_preset
from lmforge.errors import LmforgeError
from lmforge.models.encdec import EncoderDecoderLM

TOL = 1e-4
VOCAB_SMALL = 61  # from-scratch models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """kind -> (transformers model, its folder), built once per module."""
    root = tmp_path_factory.mktemp("seq2seq")
    return {kind: (save_tiny_seq2seq(kind, root / kind), root / kind) for kind in SEQ2SEQ_KINDS}


def hf_logits(model, ids, mask, dec, dec_mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits


def max_diff(a, b, dec_mask):
    return (a - b).abs()[dec_mask.bool()].max().item()


def batch_for(hf, seed=0):
    return seq2seq_batch(seed=seed, start=hf.config.decoder_start_token_id)


@pytest.mark.parametrize("kind", SEQ2SEQ_KINDS)
def test_logits_match_transformers_with_padding(kind, tiny):
    hf, folder = tiny[kind]
    model, _ = lmforge.load(folder)
    assert isinstance(model, EncoderDecoderLM) and model.is_encoder_decoder
    ids, mask, dec, dec_mask = batch_for(hf)
    with torch.no_grad():
        ours = model(ids, mask, dec, dec_mask)
    diff = max_diff(ours, hf_logits(hf, ids, mask, dec, dec_mask), dec_mask)
    print(f"parity {kind}: max abs diff {diff:.2e}")
    assert diff <= TOL


def test_structure_covers_tied_rescaled_untied_and_bart_knobs(tiny):
    configs = {kind: lmforge.load(tiny[kind][1]).model.config for kind in SEQ2SEQ_KINDS}
    bart, t5, t5_v1_1 = configs["bart"], configs["t5"], configs["t5-v1_1"]
    assert bart.position == "learned" and bart.position_offset == 2 and bart.post_norm and bart.final_logits_bias
    assert bart.scale_embedding and bart.activation == "gelu" and bart.decoder_start_token_id == 2
    assert t5.tie_word_embeddings and t5.scale_decoder_outputs and t5.activation == "relu" and not t5.gated_mlp
    assert not t5_v1_1.tie_word_embeddings and not t5_v1_1.scale_decoder_outputs
    assert t5_v1_1.gated_mlp and t5_v1_1.activation == "gelu_tanh"
    assert t5.attention_scale == 1.0 and bart.attention_scale is None


@pytest.mark.parametrize("kind, decoder_layers", [("bart", 1), ("t5", 3)])
def test_encoder_and_decoder_of_different_depths(kind, decoder_layers, tmp_path):
    hf = save_tiny_seq2seq(kind, tmp_path, decoder_layers=decoder_layers)
    model, _ = lmforge.load(tmp_path)
    assert (model.config.n_encoder_layer, model.config.n_decoder_layer) == (2, decoder_layers)
    ids, mask, dec, dec_mask = batch_for(hf, seed=4)
    with torch.no_grad():
        assert max_diff(model(ids, mask, dec, dec_mask), hf_logits(hf, ids, mask, dec, dec_mask), dec_mask) <= TOL


@pytest.mark.parametrize("kind", SEQ2SEQ_KINDS)
def test_decoder_cache_steps_match_full_forward_and_reorder(kind, tiny):
    hf, folder = tiny[kind]
    model, _ = lmforge.load(folder)
    ids, mask, dec, dec_mask = batch_for(hf, seed=1)
    expected = hf_logits(hf, ids, mask, dec, dec_mask)
    B, T = dec.shape
    with torch.no_grad():
        encoder_hidden = model.encode(ids, mask)
        cache = model.new_cache(B, T)
        steps = [model.decode(dec[:, :2], encoder_hidden, mask, dec_mask[:, :2], cache=cache)]
        for t in range(2, 4):
            steps.append(model.decode(dec[:, t:t + 1], None, mask, dec_mask[:, :t + 1], cache=cache))
        # beam-style reordering: the rows of both caches and of the inputs move together
        order = torch.tensor([2, 0, 1])
        cache.reorder(order)
        for t in range(4, T):
            steps.append(model.decode(dec[order, t:t + 1], None, mask[order], dec_mask[order, :t + 1], cache=cache))
    ours = torch.cat(steps[:3], dim=1)
    assert max_diff(ours, expected[:, :4], dec_mask[:, :4]) <= TOL
    after = torch.cat(steps[3:], dim=1)
    assert max_diff(after, expected[order, 4:], dec_mask[order, 4:]) <= TOL


@pytest.mark.parametrize("kind", SEQ2SEQ_KINDS)
def test_export_reloads_in_transformers_with_same_logits(kind, tiny, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    hf, folder = tiny[kind]
    model, _ = lmforge.load(folder)
    lmforge.save(model, tmp_path / "out")
    again = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out").float().eval()
    ids, mask, dec, dec_mask = batch_for(hf, seed=2)
    diff = max_diff(hf_logits(again, ids, mask, dec, dec_mask), hf_logits(hf, ids, mask, dec, dec_mask), dec_mask)
    print(f"export {kind}: max abs diff after transformers reload {diff:.2e}")
    assert diff <= TOL
    reloaded, _ = lmforge.load(tmp_path / "out")
    assert reloaded.config == model.config
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kind", SEQ2SEQ_KINDS)
def test_loss_matches_transformers_with_ignored_labels(kind, tiny):
    hf, folder = tiny[kind]
    model, _ = lmforge.load(folder)
    ids, mask, labels, label_mask = batch_for(hf, seed=3)
    labels = labels.masked_fill(label_mask == 0, -100)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, labels=labels).loss
        ours = model.loss(ids, mask, labels)
    assert abs(ours.item() - theirs.item()) <= TOL
    smoothed = model.loss(ids, mask, labels, label_smoothing=0.1)
    assert smoothed.item() != pytest.approx(ours.item())


def test_embedding_aliases_and_missing_final_logits_bias_are_accepted(tiny, tmp_path):
    for kind, prefix in (("t5", ""), ("bart", "model.")):
        folder = tiny[kind][1]
        out = tmp_path / kind
        out.mkdir()
        (out / "config.json").write_text((folder / "config.json").read_text())
        state = load_file(folder / "model.safetensors")
        shared = state.pop(prefix + "shared.weight")
        state[prefix + "encoder.embed_tokens.weight"] = shared
        state[prefix + "decoder.embed_tokens.weight"] = shared.clone()
        state.pop("final_logits_bias", None)
        save_file(state, out / "model.safetensors")
        model, _ = lmforge.load(out)
        assert torch.equal(model.shared.weight, shared)
        if kind == "bart":
            assert not model.final_logits_bias.any()


def corrupt(folder, dest, edit):
    dest.mkdir()
    (dest / "config.json").write_text((folder / "config.json").read_text())
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, dest / "model.safetensors")
    return dest


def test_bad_checkpoints_name_the_tensor(tiny, tmp_path):
    folder = tiny["t5"][1]
    name = "decoder.block.1.layer.1.EncDecAttention.k.weight"
    missing = corrupt(folder, tmp_path / "missing", lambda s: s.pop(name))
    with pytest.raises(LmforgeError, match=f"missing the tensor {name}"):
        lmforge.load(missing)
    misshapen = corrupt(folder, tmp_path / "shape", lambda s: s.update({name: torch.zeros(4, 32)}))
    with pytest.raises(LmforgeError, match=f"tensor {name} has shape \\(4, 32\\)"):
        lmforge.load(misshapen)
    extra = corrupt(folder, tmp_path / "extra", lambda s: s.update({"encoder.block.9.foo": torch.zeros(1)}))
    with pytest.raises(LmforgeError, match="unexpected tensor encoder.block.9.foo"):
        lmforge.load(extra)
    head = corrupt(tiny["t5-v1_1"][1], tmp_path / "head", lambda s: s.update({"lm_head.weight": torch.zeros(5, 32)}))
    with pytest.raises(LmforgeError, match="lm_head.weight has shape"):
        lmforge.load(head)


def test_unsupported_configs_are_refused(tiny, tmp_path):
    folder = tmp_path / "t5"
    folder.mkdir()
    config = json.loads((tiny["t5"][1] / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "feed_forward_proj": "gated-swish"}))
    (folder / "model.safetensors").write_bytes((tiny["t5"][1] / "model.safetensors").read_bytes())
    with pytest.raises(LmforgeError, match="feed_forward_proj='gated-swish'"):
        lmforge.load(folder)
    with pytest.raises(LmforgeError, match="cannot be saved"):
        lmforge.save(EncoderDecoderLM(encdec_preset("tiny-t5", vocab_size=50, bias=True)), tmp_path / "x")


@pytest.mark.parametrize("name", ["tiny-t5", "tiny-bart"])
def test_from_scratch_model_trains_and_exports(name, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    model = EncoderDecoderLM(encdec_preset(name, vocab_size=VOCAB_SMALL, dropout=0.0))
    ids, mask, labels, _ = seq2seq_batch(vocab=VOCAB_SMALL)
    loss = model.loss(ids, mask, labels)
    loss.backward()
    assert torch.isfinite(loss) and model.shared.weight.grad is not None
    assert model.num_parameters() > model.num_parameters(exclude_embeddings=True) or name == "tiny-t5"
    model.eval()
    lmforge.save(model, tmp_path / name)
    hf = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / name).float().eval()
    dec = model.decoder_inputs_from_labels(labels)
    with torch.no_grad():
        assert max_diff(model(ids, mask, dec), hf_logits(hf, ids, mask, dec, None), torch.ones_like(dec)) <= TOL

