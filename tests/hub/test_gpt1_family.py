"""GPT-1 (transformers' OpenAIGPTLMHeadModel) as a checkpoint family: the same logits, exports that transformers
reloads, and greedy generation token for token."""

import pytest
import torch

import lmforge
from hf_models import VOCAB, hf_position_ids, left_padded_batch
from lmforge.generate.api import generate

TOL = 1e-4


def tiny_gpt1(seed: int = 0, afn: str = "gelu"):
    import transformers as tf

    cfg = tf.OpenAIGPTConfig(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, afn=afn)
    torch.manual_seed(seed)
    model = tf.OpenAIGPTLMHeadModel(cfg).float().eval()
    with torch.no_grad():  # random init leaves biases and norms at 0/1
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
        model.lm_head.weight.mul_(20)  # a sharper distribution, so greedy choices are not near-ties
        for block in model.transformer.h:  # pre-activations of order 1, where the GELU variants differ
            block.mlp.c_fc.weight.mul_(30)
            block.mlp.c_proj.weight.mul_(10)
    return model


def hf_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=hf_position_ids(mask)).logits


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt1")
    hf = tiny_gpt1()
    hf.save_pretrained(folder)
    return hf, lmforge.load(folder).model, folder


def test_logits_match_transformers_with_and_without_padding(pair):
    hf, model, _ = pair
    assert model.config.family == "openai-gpt" and model.config.post_norm
    ids, mask = left_padded_batch()
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
    diff = (ours - hf_logits(hf, ids, mask)).abs()[mask.bool()].max().item()
    assert diff <= TOL
    full = torch.ones_like(ids)
    with torch.no_grad():
        assert (model(ids) - hf(input_ids=ids).logits).abs().max().item() <= TOL
    cache = model.new_cache(ids.shape[0], ids.shape[1])
    with torch.no_grad():
        steps = [model(ids[:, :5], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(5, ids.shape[1])]
    assert (torch.cat(steps, 1) - hf_logits(hf, ids, full)).abs().max().item() <= TOL


def test_export_reloads_in_transformers_with_the_same_logits(pair, tmp_path):
    from transformers import AutoModelForCausalLM

    hf, model, _ = pair
    lmforge.save(model, tmp_path / "out")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out").float().eval()
    assert type(again).__name__ == "OpenAIGPTLMHeadModel"
    ids, mask = left_padded_batch(seed=2)
    assert (hf_logits(again, ids, mask) - hf_logits(hf, ids, mask)).abs()[mask.bool()].max().item() <= TOL
    reloaded = lmforge.load(tmp_path / "out").model
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_greedy_generation_is_token_exact(pair):
    hf, model, _ = pair
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(5))
    ours = generate(model, ids, max_new_tokens=20, ignore_eos=True).output.sequences
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, min_new_tokens=20,
                      do_sample=False, pad_token_id=0)
    assert ours.tolist() == ref[:, ids.shape[1]:].tolist()


def test_relu_variant_and_a_refused_activation(tmp_path):
    hf = tiny_gpt1(seed=1, afn="relu")
    hf.save_pretrained(tmp_path / "relu")
    model = lmforge.load(tmp_path / "relu").model
    assert model.config.activation == "relu"
    ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        assert (model(ids) - hf(input_ids=ids).logits).abs().max().item() <= TOL
    import json

    cfg = json.loads((tmp_path / "relu" / "config.json").read_text())
    cfg["afn"] = "mish"
    (tmp_path / "relu" / "config.json").write_text(json.dumps(cfg))
    from lmforge.errors import LmforgeError

    with pytest.raises(LmforgeError, match="afn=.mish."):
        lmforge.load(tmp_path / "relu")


def test_exact_gelu_would_be_caught(pair):
    """transformers' GPT-1 "gelu" is the tanh approximation; the test models tell the two apart."""
    hf, model, _ = pair
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        ours = (model(ids) - ref).abs().max().item()
        for block in model.blocks:
            block.mlp.act = torch.nn.functional.gelu
        exact = (model(ids) - ref).abs().max().item()
    for block in model.blocks:
        block.mlp.act = lambda x: torch.nn.functional.gelu(x, approximate="tanh")
    assert ours <= TOL and exact > 20 * max(ours, 1e-6)
