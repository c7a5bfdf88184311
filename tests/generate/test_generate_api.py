"""generate / stream / Generator: stopping, streaming, defaults, seeds, bad input."""

import json
import math

import pytest
import torch
from generation_models import ScriptedHead

import lmforge
from hf_models import save_tiny_with_tokenizer
from lmforge.errors import LmforgeError
from lmforge.generate.api import Generator, generate, stream


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-tok")
    save_tiny_with_tokenizer(path)
    return path


@pytest.fixture
def ckpt(folder):
    return lmforge.load(folder)


def scripted(ckpt, text):
    """Make greedy decoding write `text` (then EOS); returns its token ids."""
    tok = ckpt.tokenizer
    ids = tok.encode(text)
    ckpt.model.lm_head = ScriptedHead(ids, tok.vocab_size, tok.eos_token_id)
    return ids


def test_stream_holds_back_split_multibyte_characters(ckpt):
    ids = scripted(ckpt, "a€b жx")
    assert len(ids) >= 6  # € and ж are not in the training text: one token per byte
    pieces = list(stream(ckpt, "Hi"))
    assert "".join(pieces) == "a€b жx"
    assert not any("\ufffd" in p for p in pieces)
    assert "€" in pieces[1] and "ж" in "".join(pieces[2:])


def test_stop_strings_cut_text_and_stop_generation(ckpt):
    ids = scripted(ckpt, "one two STOP three")
    result = generate(ckpt, "Hi", stop_strings=["STOP", "never"], max_new_tokens=30)
    completion = result.completions[0][0]
    assert completion.text == "one two "
    assert len(completion.token_ids) < len(ids)  # stopped at the token completing "STOP"
    assert "STOP" in ckpt.tokenizer.decode(completion.token_ids)
    scripted(ckpt, "one two STOP three")
    assert "".join(stream(ckpt, "Hi", stop_strings="STOP")) == "one two "


def test_eos_ids_min_new_tokens_and_max_new_tokens(ckpt):
    tok = ckpt.tokenizer
    ids = scripted(ckpt, "abcdef")
    assert generate(ckpt, "Hi").completions[0][0].token_ids == ids + [tok.eos_token_id]
    scripted(ckpt, "abcdef")
    out = generate(ckpt, "Hi", eos_token_id=[tok.eos_token_id, ids[2]]).completions[0][0]
    assert out.token_ids == ids[:3]  # the second EOS id stopped it
    scripted(ckpt, "abcdef")
    assert len(generate(ckpt, "Hi", max_new_tokens=4).completions[0][0].token_ids) == 4
    ckpt.model.lm_head = ScriptedHead([], tok.vocab_size, tok.eos_token_id)  # EOS right away
    out = generate(ckpt, "Hi", min_new_tokens=3).completions[0][0].token_ids
    assert len(out) == 4 and out[-1] == tok.eos_token_id and tok.eos_token_id not in out[:3]
    ckpt.model.lm_head = ScriptedHead([], tok.vocab_size, tok.eos_token_id)
    assert len(generate(ckpt, "Hi", max_new_tokens=5, ignore_eos=True).completions[0][0].token_ids) == 5


def test_unconditional_generation_starts_from_bos(ckpt):
    result = generate(ckpt, None, max_new_tokens=5)
    assert result.prompt_token_ids == [[ckpt.tokenizer.bos_token_id]]
    ckpt.model.config.bos_token_id = ckpt.model.config.eos_token_id = None
    with pytest.raises(LmforgeError, match="neither a BOS nor an EOS"):
        generate(ckpt.model, None, max_new_tokens=5)


def test_seeded_sampling_is_reproducible(ckpt):
    kw = dict(do_sample=True, top_k=0, max_new_tokens=20, ignore_eos=True, num_return_sequences=2)
    a, b = generate(ckpt, "Hi", seed=7, **kw), generate(ckpt, "Hi", seed=7, **kw)
    c = generate(ckpt, "Hi", seed=8, **kw)
    assert torch.equal(a.output.sequences, b.output.sequences)
    assert not torch.equal(a.output.sequences, c.output.sequences)


def test_generation_config_json_supplies_defaults(folder):
    (folder / "generation_config.json").write_text(json.dumps({"num_beams": 3, "max_new_tokens": 4,
                                                               "num_return_sequences": 2}))
    try:
        gen = Generator.from_pretrained(folder)
        result = gen("Hi", ignore_eos=True)
        assert result.strategy == "beam" and len(result.completions[0]) == 2
        assert all(len(c.token_ids) == 4 for c in result.completions[0])
        assert gen("Hi", num_beams=1, num_return_sequences=1).strategy == "greedy"
    finally:
        (folder / "generation_config.json").unlink()


def test_prompt_longer_than_context(ckpt):
    prompt = list(range(3, 63))  # 60 tokens, context 64
    with pytest.raises(LmforgeError, match=r"prompt \(60 tokens\).*max_new_tokens \(10\).*context \(64 tokens\)"):
        generate(ckpt, [prompt], max_new_tokens=10)
    result = generate(ckpt, [prompt], max_new_tokens=10, truncate="left", ignore_eos=True)
    assert result.prompt_token_ids == [prompt[-54:]] and len(result.completions[0][0].token_ids) == 10


@pytest.mark.parametrize("kw, message", [
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_beams=3, num_beam_groups=2), "divisible"),
    (dict(do_sample=True, top_p=1.5), "top_p"),
    (dict(do_sample=True, temperature=-1.0), "temperature"),
])
def test_incompatible_options(ckpt, kw, message):
    with pytest.raises(LmforgeError, match=message):
        generate(ckpt, "Hi", **kw)


def test_score_matches_a_direct_forward(ckpt):
    from lmforge.generate.score import score_text

    s = score_text(ckpt.model, ckpt.tokenizer, "The quick brown fox")
    assert len(s.token_logprobs) == len(s.token_ids) - 1
    logits = ckpt.model(torch.tensor([s.token_ids]))[0].log_softmax(-1)
    expected = [logits[i, s.token_ids[i + 1]].item() for i in range(len(s.token_ids) - 1)]
    assert s.token_logprobs == pytest.approx(expected, abs=1e-5)
    assert s.perplexity == pytest.approx(math.exp(-sum(expected) / len(expected)), rel=1e-5)
    with_bos = score_text(ckpt.model, ckpt.tokenizer, "The quick brown fox", bos=True)
    assert with_bos.token_ids[0] == ckpt.tokenizer.bos_token_id
    assert len(with_bos.token_logprobs) == len(s.token_ids)
