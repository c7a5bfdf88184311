"""Prefix and prompt tuning: PEFT's folders both ways on GPT-2 and Llama (grouped-query attention: a prefix per
key/value head), with PEFT's logits; and decoding with the KV cache, which starts holding the virtual tokens, on
left-padded batches with every strategy, compiled too, and on encoder-decoders: against PEFT's generate where it
works (GPT-2), and against a reference without any cache (each step runs the whole sequence), where PEFT's is
wrong (Llama with transformers' new caches) or absent (beam variants, contrastive search, BART, T5)."""

from __future__ import annotations

import pytest
import torch

import lmforge
import lmforge.generate.api as api
from hf_models import left_padded_batch, tiny_hf_model, tiny_hf_seq2seq
from lmforge.adapt import AdapterSettings, add_adapter, save_adapter

peft = pytest.importorskip("peft")

METHODS = {  # name -> (PEFT config kwargs, lmforge settings kwargs)
    "prefix": (dict(peft_type="PREFIX_TUNING"), dict(method="prefix")),
    "prefix-projection": (dict(peft_type="PREFIX_TUNING", prefix_projection=True, encoder_hidden_size=24),
                          dict(method="prefix", prefix_projection=True, encoder_hidden_size=24)),
    "prompt": (dict(peft_type="PROMPT_TUNING"), dict(method="prompt")),
}
STRATEGIES = {
    "greedy": {},
    "sample": dict(do_sample=True, top_k=20, temperature=0.9),
    "beam": dict(num_beams=3, num_return_sequences=2),
    "beam-ngram": dict(num_beams=4, no_repeat_ngram_size=2, length_penalty=0.5),
    "group-beam": dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5),
    "contrastive": dict(penalty_alpha=0.6, top_k=4),
}


def peft_config(method: str, seq2seq: bool = False):
    kwargs = dict(METHODS[method][0])
    kind = kwargs.pop("peft_type")
    cls = peft.PrefixTuningConfig if kind == "PREFIX_TUNING" else peft.PromptTuningConfig
    return cls(num_virtual_tokens=3, task_type="SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM", **kwargs)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    folders = {}
    for kind in ("gpt2", "llama", "bart", "t5"):
        folder = tmp_path_factory.mktemp(kind)
        (tiny_hf_seq2seq(kind) if kind in ("bart", "t5") else tiny_hf_model(kind)).save_pretrained(folder)
        folders[kind] = folder
    return folders


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_folder_peft_writes_gives_peft_logits_in_lmforge(kind, method, bases, tmp_path):
    hf = peft.get_peft_model(tiny_hf_model(kind), peft_config(method)).eval()
    hf.save_pretrained(tmp_path / "adapter")
    ckpt = lmforge.load(bases[kind], adapter=tmp_path / "adapter")
    ids = left_padded_batch()[0][:1]
    with torch.no_grad():
        ref = hf(input_ids=ids).logits[:, -ids.shape[1]:]
        assert (ckpt.model(ids) - ref).abs().max() <= 1e-4
        with ckpt.disable_adapter(), hf.disable_adapter():
            assert (ckpt.model(ids) - hf(input_ids=ids).logits).abs().max() <= 1e-4


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_folder_lmforge_writes_gives_lmforge_logits_in_peft(kind, method, bases, tmp_path):
    ckpt = lmforge.load(bases[kind])
    add_adapter(ckpt.model, "default", AdapterSettings(num_virtual_tokens=3, **METHODS[method][1]))
    save_adapter(ckpt.model, tmp_path / "adapter")
    hf = peft.PeftModel.from_pretrained(tiny_hf_model(kind), tmp_path / "adapter").eval()
    ids = left_padded_batch()[0][:1]
    with torch.no_grad():
        assert (ckpt.model(ids) - hf(input_ids=ids).logits[:, -ids.shape[1]:]).abs().max() <= 1e-4


def test_a_grouped_query_model_has_a_prefix_per_key_value_head(bases, tmp_path):
    ckpt = lmforge.load(bases["llama"])  # 4 query heads, 2 key/value heads of 8 dimensions, 2 layers
    add_adapter(ckpt.model, "default", AdapterSettings("prefix", num_virtual_tokens=5))
    assert ckpt.model.virtual_tokens.table.shape == (5, 2 * 2 * 2 * 8)
    cache = ckpt.model.new_cache(3, 10)
    assert cache.length == 5 and cache.keys[0].shape == (3, 2, 15, 8)


class Recompute:
    """A reference decoding session without a cache: each step runs the whole sequence (the model's forward
    without a cache, which attends to the virtual tokens first)."""

    def __init__(self, model, output_hidden=False, decoder_start_token_id=None, compile=False):
        self.model, self.hidden = model, None
        self.seq2seq = model.is_encoder_decoder
        self.start_token = decoder_start_token_id if decoder_start_token_id is not None or not self.seq2seq \
            else model.config.decoder_start_token_id

    @property
    def batch_size(self):
        return self.prefix_ids.shape[0]

    def prompt_limit(self, max_new_tokens):
        virtual = self.model.virtual_tokens
        return None if self.seq2seq else self.model.config.block_size - max_new_tokens - virtual.length

    def start(self, ids, mask, max_new_tokens):
        mask = torch.ones_like(ids) if mask is None else mask
        if self.seq2seq:
            order = torch.argsort(1 - mask, dim=1, stable=True)
            self.source, self.source_mask = ids.gather(1, order), mask.gather(1, order)
            ids = torch.full((ids.shape[0], 1), self.start_token)
            mask = torch.ones_like(ids)
        self.prefix_ids, self.prefix_mask = ids, mask
        self.ids, self.mask = ids, mask
        return self._run(ids.shape[1])

    def step(self, tokens):
        self.ids = torch.cat((self.ids, tokens.view(-1, 1)), dim=1)
        self.mask = torch.cat((self.mask, torch.ones_like(tokens.view(-1, 1))), dim=1)
        return self._run(1)

    def _run(self, new):
        m = self.model
        if self.seq2seq:
            h = m.decoder_hidden_states(self.ids, m.encode(self.source, self.source_mask),
                                        m.encoder_mask(self.source_mask))
            logits = m.logits(h[:, -1])
        else:
            h = m.hidden_states(self.ids, attention_mask=self.mask)
            logits = m.lm_head(h[:, -1])
        self.hidden = h[:, -new:]
        return logits.float()

    def reorder(self, index):
        for name in ("ids", "mask", "prefix_ids", "prefix_mask", "hidden") + (("source", "source_mask")
                                                                             if self.seq2seq else ()):
            setattr(self, name, getattr(self, name).index_select(0, index))

    def close(self):
        pass


def generate_both(model, monkeypatch, ids, mask, **kwargs):
    """(the reference's output, the cached sessions') for the same call."""
    ours = api.generate(model, ids, attention_mask=mask, seed=0, max_new_tokens=8, **kwargs).output
    with monkeypatch.context() as patch:
        patch.setattr(api, "open_session", Recompute)
        ref = api.generate(model, ids, attention_mask=mask, seed=0, max_new_tokens=8, **kwargs).output
    return ref, ours


DECODING_CASES = [  # every strategy on the grouped-query prefix; the others spread over the rest
    *(("llama", "prefix", strategy) for strategy in STRATEGIES),
    ("llama", "prompt", "beam-ngram"), ("llama", "prompt", "contrastive"), ("gpt2", "prefix-projection", "beam"),
    ("bart", "prefix", "beam"), ("bart", "prompt", "greedy"), ("t5", "prompt", "beam"), ("t5", "prefix", "greedy"),
]


@pytest.mark.parametrize("kind, method, strategy", DECODING_CASES, ids=["-".join(c) for c in DECODING_CASES])
def test_every_strategy_decodes_over_the_cache_as_without_one(kind, method, strategy, bases, monkeypatch):
    ckpt = lmforge.load(bases[kind])
    add_adapter(ckpt.model, "default", AdapterSettings(num_virtual_tokens=3, **METHODS[method][1]))
    ids, mask = left_padded_batch(seed=1)
    ref, ours = generate_both(ckpt.model, monkeypatch, ids, mask, **STRATEGIES[strategy])
    assert torch.equal(ref.sequences, ours.sequences)
    assert torch.allclose(ref.scores, ours.scores, atol=1e-4)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
@pytest.mark.parametrize("method", list(METHODS))
def test_gpt2_decodes_as_peft_generate_does(method, strategy, bases, tmp_path):
    hf = peft.get_peft_model(tiny_hf_model("gpt2"), peft_config(method)).eval()
    hf.save_pretrained(tmp_path / "adapter")
    ckpt = lmforge.load(bases["gpt2"], adapter=tmp_path / "adapter")
    ids = left_padded_batch(seed=2)[0][:1]
    kwargs = STRATEGIES[strategy] if strategy == "greedy" else dict(num_beams=3)
    ref = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                      eos_token_id=None, pad_token_id=0, **kwargs)
    ours = api.generate(ckpt, ids, max_new_tokens=8, ignore_eos=True, **kwargs)
    assert ours.completions[0][0].token_ids == ref[0, ids.shape[1]:].tolist()


def test_compiled_decoding_sees_the_prefix(bases):
    ckpt = lmforge.load(bases["llama"])
    add_adapter(ckpt.model, "default", AdapterSettings("prefix", num_virtual_tokens=3))
    ids, mask = left_padded_batch(seed=3)
    eager = api.generate(ckpt.model, ids, attention_mask=mask, max_new_tokens=6, num_beams=2)
    compiled = api.generate(ckpt.model, ids, attention_mask=mask, max_new_tokens=6, num_beams=2, compile=True)
    assert torch.equal(eager.output.sequences, compiled.output.sequences)
