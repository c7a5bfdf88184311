"""Continuous batching (generate/batch.py, RowSession, RowCache): rows that join and leave between steps give what
each request gives alone through `generate`."""

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.generate.api import generate, resolve_config
from lmforge.generate.batch import BatchRequest, DecodingBatch
from lmforge.generate.processors import FrequencyPresencePenaltyLogitsProcessor, LogitBiasLogitsProcessor
from lmforge.generate.session import DecoderOnlySession, RowSession
from lmforge.models.decoder import DecoderLM

LLAMA = dict(family="llama", norm="rmsnorm", position="rope", gated_mlp=True, activation="silu", bias=False, n_kv_head=2)


def model_of(family: str, seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    extra = LLAMA if family == "llama" else {}
    cfg = ModelConfig(**{"family": family, **extra}, vocab_size=97, n_layer=2, n_head=4, n_embd=32, block_size=64,
                      initializer_range=0.15, eos_token_id=2, bos_token_id=1)
    return DecoderLM(cfg).eval()


PROMPTS = [[5, 17, 33, 9], [40], [8, 8, 61, 12, 70, 3, 44], [90, 91]]


def run(batch: DecodingBatch, requests: list[BatchRequest], join_every: int = 2) -> dict:
    """Tokens per request and choice, requests joining one every `join_every` steps."""
    out, pending, step = {}, list(requests), 0
    while pending or batch.requests:
        if pending and step % join_every == 0:
            batch.add(pending.pop(0))
        for request, events in batch.step().items():
            for e in events:
                out.setdefault(id(request), {}).setdefault(e.choice, []).append(e.token)
        step += 1
    return {id(r): [out[id(r)][c] for c in range(r.n)] for r in requests}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_row_session_matches_a_session_per_prompt(family):
    """Rows of different lengths, started at different steps: each row's logits are those of the prompt alone
    (bitwise while a row is alone in the batch, to float rounding among others)."""
    model = model_of(family)
    rows = RowSession(model)
    with torch.inference_mode():
        first = rows.add(PROMPTS[0], 1, 10)
        alone = DecoderOnlySession(model)
        ref = alone.start(torch.tensor([PROMPTS[0]]), None, 10)
        assert torch.equal(first, ref)
        logits = rows.step(torch.tensor([7]))
        assert torch.equal(logits, alone.step(torch.tensor([7])))
        rows.add(PROMPTS[2], 2, 10)  # two copies of a longer prompt join
        refs = [alone]
        for p in (PROMPTS[2], PROMPTS[2]):
            s = DecoderOnlySession(model)
            s.start(torch.tensor([p]), None, 10)
            refs.append(s)
        for t in range(4):
            tokens = torch.tensor([11 + t, 20 + t, 30 + t])
            got = rows.step(tokens)
            want = torch.cat([s.step(tokens[i:i + 1]) for i, s in enumerate(refs)])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        order = rows.remove([0])  # the first row leaves; the others go on
        assert sorted(order) == [1, 2]
        tokens = torch.tensor([50, 51])
        got = rows.step(tokens)
        want = torch.cat([refs[order[i]].step(tokens[i:i + 1]) for i in range(2)])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_greedy_and_seeded_sampling_equal_generate_alone():
    model = model_of("llama")
    config = lambda **kw: resolve_config(model, None, None, None, **kw)  # noqa: E731
    plans = [dict(max_new_tokens=12), dict(max_new_tokens=9, do_sample=True, temperature=0.9, top_k=20),
             dict(max_new_tokens=15, repetition_penalty=1.3, no_repeat_ngram_size=2),
             dict(max_new_tokens=7, do_sample=True, top_p=0.8, min_new_tokens=3)]
    requests = [BatchRequest(p, config(**kw), n=3 if kw.get("do_sample") else 1, seed=i)
                for i, (p, kw) in enumerate(zip(PROMPTS, plans))]
    got = run(DecodingBatch(model), requests)
    for r, kw in zip(requests, plans):
        extra = {"num_return_sequences": r.n} if r.n > 1 else {}
        ref = generate(model, [r.prompt], seed=r.seed, **kw, **extra)
        assert got[id(r)] == [c.token_ids for c in ref.completions[0]], kw
    assert len({tuple(t) for t in got[id(requests[1])]}) > 1  # the choices of a request differ


def test_a_finished_choice_keeps_its_place_in_the_draw():
    """Choices that end early (EOS) leave the batch, yet the others sample as in generate."""
    model = model_of("gpt2", seed=3)
    with torch.no_grad():
        model.lm_head.weight[2] *= 2  # EOS becomes likely
    config = resolve_config(model, None, None, None, max_new_tokens=20, do_sample=True)
    request = BatchRequest([5, 6, 7], config, n=6, seed=11)
    got = run(DecodingBatch(model), [request])[id(request)]
    assert len({len(t) for t in got}) > 1  # some choices ended before others
    ref = generate(model, [[5, 6, 7]], do_sample=True, max_new_tokens=20, num_return_sequences=6, seed=11)
    assert got == [c.token_ids for c in ref.completions[0]]


def test_events_carry_logprobs_alternatives_and_finish_reasons():
    model = model_of("gpt2")
    config = resolve_config(model, None, None, None, max_new_tokens=5)
    batch = DecodingBatch(model)
    request = BatchRequest(PROMPTS[0], config, top_logprobs=3, prompt_logprobs=True)
    batch.add(request)
    assert len(request.prompt_scores) == len(PROMPTS[0]) - 1
    events = []
    while batch.requests:
        events += batch.step()[request]
    assert [e.finish for e in events] == [None] * 4 + ["length"]
    for e in events:
        assert len(e.top) == 3 and e.top[0][0] == e.token  # greedy: the chosen token is the most probable
        assert e.logprob == pytest.approx(e.top[0][1], abs=1e-5)
    assert batch.session.cache.capacity == (0, 0)  # an idle batch holds no cache


def test_cancel_drops_a_request_and_the_others_go_on():
    model = model_of("llama")
    config = resolve_config(model, None, None, None, max_new_tokens=10)
    a, b = BatchRequest(PROMPTS[0], config), BatchRequest(PROMPTS[2], config)
    batch = DecodingBatch(model)
    batch.add(a)
    batch.add(b)
    tokens = []
    for step in range(10):
        events = batch.step()
        tokens += [e.token for e in events.get(b, [])]
        if step == 2:
            batch.cancel(a)
            assert batch.requests == [b] and batch.rows == 1
    assert tokens == generate(model, [PROMPTS[2]], max_new_tokens=10).completions[0][0].token_ids


def test_openai_penalties_and_logit_bias():
    ids = torch.tensor([[4, 4, 1, 2, 2, 2, 3]])  # prompt [4, 4], generated 1, 2, 2, 2, 3
    scores = torch.zeros(1, 6)
    out = FrequencyPresencePenaltyLogitsProcessor(2, frequency_penalty=0.5, presence_penalty=1.0)(ids, scores)
    assert out.tolist() == [[0.0, -1.5, -2.5, -1.5, 0.0, 0.0]]
    out = LogitBiasLogitsProcessor({5: 100.0, 0: -100.0})(ids, scores)
    assert out.tolist() == [[-100.0, 0, 0, 0, 0, 100.0]]
