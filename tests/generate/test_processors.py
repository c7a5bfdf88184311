"""Logits processors and GenerationConfig: parity with transformers' own classes.

Ties: the logits are rounded to a coarse grid in some examples so that many of them tie. Parity stays
exact with ties because top-k keeps every token tied with the k-th (a threshold, as in
transformers) and top-p / typical rank with the same ``torch.sort`` call as transformers.
"""

import functools
import json

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.errors import LmforgeError
from lmforge.generate import processors as P

SETTINGS = settings(max_examples=60, deadline=None)
seeds = st.integers(0, 2**31 - 1)
batches = st.integers(1, 4)
vocabs = st.integers(2, 64)
min_keeps = st.integers(1, 3)


def random_scores(seed: int, batch: int, vocab: int, ties: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, vocab, generator=g) * 3
    return torch.round(scores * 2) / 2 if ties else scores


def random_ids(seed: int, batch: int, seq_len: int, alphabet: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, alphabet, (batch, seq_len), generator=g)


def assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert torch.equal(ours.isneginf(), theirs.isneginf())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def check_parity(ours, theirs, input_ids: torch.Tensor, scores: torch.Tensor) -> None:
    original = scores.clone()
    result = ours(input_ids, scores)
    assert torch.equal(scores, original), "processors must not modify their input"
    assert_same(result, theirs(input_ids, scores.clone()))


@SETTINGS
@given(seeds, batches, vocabs, st.floats(0.05, 5.0))
def test_temperature(seed, batch, vocab, temperature):
    scores = random_scores(seed, batch, vocab)
    check_parity(
        P.TemperatureLogitsWarper(temperature),
        transformers.TemperatureLogitsWarper(temperature),
        random_ids(seed, batch, 3, vocab),
        scores,
    )


@SETTINGS
@given(seeds, batches, vocabs, st.integers(1, 80), min_keeps, st.booleans())
def test_top_k(seed, batch, vocab, top_k, min_keep, ties):
    check_parity(
        P.TopKLogitsWarper(top_k, min_keep),
        transformers.TopKLogitsWarper(top_k, min_tokens_to_keep=min_keep),
        random_ids(seed, batch, 3, vocab),
        random_scores(seed, batch, vocab, ties),
    )


@SETTINGS
@given(seeds, batches, vocabs, st.floats(0.01, 1.0), min_keeps, st.booleans())
def test_top_p(seed, batch, vocab, top_p, min_keep, ties):
    check_parity(
        P.TopPLogitsWarper(top_p, min_keep),
        transformers.TopPLogitsWarper(top_p, min_tokens_to_keep=min_keep),
        random_ids(seed, batch, 3, vocab),
        random_scores(seed, batch, vocab, ties),
    )


@SETTINGS
@given(seeds, batches, vocabs, st.floats(0.01, 0.99), min_keeps, st.booleans())
def test_typical(seed, batch, vocab, mass, min_keep, ties):
    check_parity(
        P.TypicalLogitsWarper(mass, min_keep),
        transformers.TypicalLogitsWarper(mass, min_tokens_to_keep=min_keep),
        random_ids(seed, batch, 3, vocab),
        random_scores(seed, batch, vocab, ties),
    )


@SETTINGS
@given(seeds, batches, vocabs, st.floats(0.0, 1.0), min_keeps, st.booleans())
def test_min_p(seed, batch, vocab, min_p, min_keep, ties):
    check_parity(
        P.MinPLogitsWarper(min_p, min_keep),
        transformers.MinPLogitsWarper(min_p, min_tokens_to_keep=min_keep),
        random_ids(seed, batch, 3, vocab),
        random_scores(seed, batch, vocab, ties),
    )


@SETTINGS
@given(
    seeds, batches, vocabs, st.integers(0, 20), st.floats(0.1, 3.0), st.sampled_from(["none", "int", "rows"])
)
def test_repetition_penalty(seed, batch, vocab, seq_len, penalty, ignore_kind):
    input_ids = random_ids(seed, batch, seq_len, vocab + 3)  # some ids beyond the output vocabulary
    g = torch.Generator().manual_seed(seed)
    ignore = {
        "none": None,
        "int": seq_len // 2,
        "rows": torch.randint(0, seq_len + 1, (batch,), generator=g),
    }[ignore_kind]
    check_parity(
        P.RepetitionPenaltyLogitsProcessor(penalty, ignore),
        transformers.RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=ignore),
        input_ids,
        random_scores(seed, batch, vocab),
    )


def banned_ngram_tokens(ids: list[int], n: int) -> set[int]:
    """Reference: the tokens that would complete an n-gram already in ``ids``."""
    if len(ids) < n:
        return set()
    suffix = ids[len(ids) - n + 1 :]
    return {ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i : i + n - 1] == suffix}


@SETTINGS
@given(seeds, st.integers(1, 6), st.integers(1, 4), st.integers(0, 30), st.integers(2, 5))
def test_no_repeat_ngram(seed, batch, n, seq_len, alphabet):
    vocab = 8
    input_ids = random_ids(seed, batch, seq_len, alphabet)
    scores = random_scores(seed, batch, vocab)
    processor = P.NoRepeatNGramLogitsProcessor(n)
    check_parity(processor, transformers.NoRepeatNGramLogitsProcessor(n), input_ids, scores)
    banned = processor(input_ids, scores).isneginf()
    for row in range(batch):
        expected = banned_ngram_tokens(input_ids[row].tolist(), n)
        assert set(banned[row].nonzero().flatten().tolist()) == expected


bad_word_lists = st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=3), min_size=1, max_size=5)
eos_ids = st.sampled_from([None, 2, [2, 4]])


@SETTINGS
@given(seeds, batches, st.integers(0, 8), bad_word_lists, eos_ids)
def test_no_bad_words(seed, batch, seq_len, bad_words, eos):
    vocab = 8
    processor = P.NoBadWordsLogitsProcessor(bad_words, eos)
    theirs = transformers.NoBadWordsLogitsProcessor(bad_words, eos)
    eos_list = [] if eos is None else [eos] if isinstance(eos, int) else eos
    if all(len(seq) == 1 and seq[0] in eos_list for seq in bad_words):
        def theirs(ids, scores):  # transformers' processor would ban nothing here either
            return scores
    check_parity(processor, theirs, random_ids(seed, batch, seq_len, 6), random_scores(seed, batch, vocab))


def test_bad_words_validation():
    with pytest.raises(LmforgeError):
        P.NoBadWordsLogitsProcessor([[1], []])
    with pytest.raises(LmforgeError):
        P.NoBadWordsLogitsProcessor([])
    with pytest.raises(LmforgeError, match="vocabulary"):
        P.NoBadWordsLogitsProcessor([[3, 99]])(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 10))


eos_with_outside = st.sampled_from([1, [1, 3], [0, 100]])  # 100 lies outside the vocabulary


@SETTINGS
@given(seeds, batches, vocabs, st.integers(0, 15), st.integers(0, 12), eos_with_outside)
def test_min_length(seed, batch, vocab, min_length, seq_len, eos):
    check_parity(
        P.MinLengthLogitsProcessor(min_length, eos),
        transformers.MinLengthLogitsProcessor(min_length, eos),
        random_ids(seed, batch, seq_len, vocab),
        random_scores(seed, batch, vocab),
    )


@SETTINGS
@given(seeds, batches, vocabs, st.integers(0, 6), st.integers(0, 8), st.integers(6, 14), eos_with_outside)
def test_min_new_tokens(seed, batch, vocab, prompt_len, min_new, seq_len, eos):
    check_parity(
        P.MinNewTokensLengthLogitsProcessor(prompt_len, min_new, eos),
        transformers.MinNewTokensLengthLogitsProcessor(prompt_len, min_new, eos),
        random_ids(seed, batch, seq_len, vocab),
        random_scores(seed, batch, vocab),
    )


@SETTINGS
@given(seeds, batches, st.integers(1, 3), st.integers(0, 9))
def test_forced_bos(seed, batch, seq_len, bos):
    check_parity(
        P.ForcedBOSTokenLogitsProcessor(bos),
        transformers.ForcedBOSTokenLogitsProcessor(bos),
        random_ids(seed, batch, seq_len, 10),
        random_scores(seed, batch, 10),
    )


@SETTINGS
@given(seeds, batches, st.integers(1, 8), st.integers(2, 8), st.sampled_from([1, [1, 7]]))
def test_forced_eos(seed, batch, seq_len, max_length, eos):
    check_parity(
        P.ForcedEOSTokenLogitsProcessor(max_length, eos),
        transformers.ForcedEOSTokenLogitsProcessor(max_length, eos),
        random_ids(seed, batch, seq_len, 10),
        random_scores(seed, batch, 10),
    )


# --- build_processors against transformers' generate ---------------------------------------------

VOCAB = 24


@functools.lru_cache(maxsize=1)
def tiny_gpt2() -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=None, eos_token_id=None
    )
    return transformers.GPT2LMHeadModel(config).eval()


@st.composite
def generation_params(draw) -> dict:
    """Generation parameters in transformers' names; lengths are chosen by each test."""
    eos = draw(st.sampled_from([None, 3, [3, 5]]))
    params = {
        "do_sample": draw(st.booleans()),
        "temperature": draw(st.sampled_from([1.0, 0.7, 1.6])),
        "top_k": draw(st.sampled_from([0, 1, 4, 50])),
        "top_p": draw(st.sampled_from([1.0, 0.9, 0.5])),
        "typical_p": draw(st.sampled_from([1.0, 0.8])),
        "min_p": draw(st.sampled_from([None, 0.05, 0.3])),
        "repetition_penalty": draw(st.sampled_from([1.0, 1.3, 0.8])),
        "no_repeat_ngram_size": draw(st.sampled_from([0, 1, 2, 3])),
        "bad_words_ids": draw(st.sampled_from([None, [[7]], [[6, 2], [8], [4, 5, 6]]])),
        "eos_token_id": eos,
        "pad_token_id": 0,
        "forced_bos_token_id": draw(st.sampled_from([None, 9])),
        "forced_eos_token_id": draw(st.sampled_from([None, 3, [3, 5]])),
    }
    return params


def transformers_pipeline(params: dict, prompt_len: int, attention_mask: torch.Tensor):
    """transformers' processor list for ``params``, through the same private helper generate uses."""
    model = tiny_gpt2()
    config = transformers.GenerationConfig(**params)
    model._prepare_special_tokens(config, True, "cpu")
    return model._get_logits_processor(
        config,
        input_ids_seq_length=prompt_len,
        logits_processor=None,
        device="cpu",
        model_kwargs={"attention_mask": attention_mask},
    )


def kind(processor) -> str:
    # transformers adds MinLength and MinNewTokensLength with one resolved bound; we add the first.
    return type(processor).__name__.replace("MinNewTokensLength", "MinLength")


@settings(max_examples=60, deadline=None)
@given(
    generation_params(),
    seeds,
    st.sampled_from([1, 3]),
    st.integers(1, 6),
    st.integers(0, 4),
    st.integers(0, 8),
    st.integers(3, 12),
)
def test_build_processors_matches_transformers_pipeline(
    params, seed, num_beams, prompt_len, extra, min_length, max_length
):
    params = dict(params, num_beams=num_beams, min_length=min_length, max_length=max_length)
    batch, seq_len = 3, prompt_len + extra
    attention_mask = torch.ones(batch, prompt_len, dtype=torch.long)
    attention_mask[0, : prompt_len // 2] = 0  # left padding in the first row
    processors, warpers = P.build_processors(P.GenerationConfig(**params), prompt_len, attention_mask)
    theirs = transformers_pipeline(params, prompt_len, attention_mask)
    assert [kind(p) for p in processors + warpers] == [kind(p) for p in theirs]
    input_ids = random_ids(seed, batch, seq_len, VOCAB)
    scores = random_scores(seed, batch, VOCAB)
    assert_same(
        P.apply_processors(processors + warpers, input_ids, scores), theirs(input_ids, scores.clone())
    )


@settings(max_examples=15, deadline=None)
@given(
    generation_params(), seeds, st.sampled_from([1, 4]), st.integers(1, 6), st.sampled_from([None, 0, 2, 4])
)
def test_build_processors_replays_transformers_sampling(
    params, seed, prompt_len, max_new_tokens, min_new_tokens
):
    """Sample with transformers, then recompute every step's processed scores from its raw logits."""
    params = dict(params, do_sample=True, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
    prompt = random_ids(seed, 2, prompt_len, VOCAB)
    torch.manual_seed(seed)
    out = tiny_gpt2().generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        output_scores=True,
        output_logits=True,
        return_dict_in_generate=True,
        **params,
    )
    processors, warpers = P.build_processors(P.GenerationConfig(**params), prompt_len)
    for step, (logits, expected) in enumerate(zip(out.logits, out.scores)):
        input_ids = out.sequences[:, : prompt_len + step]
        assert_same(P.apply_processors(processors + warpers, input_ids, logits), expected)


def test_warpers_only_when_sampling():
    processors, warpers = P.build_processors(P.GenerationConfig(temperature=0.5, top_p=0.5), 3)
    assert processors == [] and warpers == []
    _, warpers = P.build_processors(P.GenerationConfig(do_sample=True, top_k=0, temperature=1.0), 3)
    assert warpers == []


# --- GenerationConfig ----------------------------------------------------------------------------


def test_from_json_file_reads_transformers_output(tmp_path):
    transformers.GenerationConfig(
        do_sample=True,
        top_p=0.9,
        temperature=0.6,
        max_new_tokens=30,
        eos_token_id=[1, 2],
        bad_words_ids=[[5, 6]],
        num_beams=4,
        early_stopping="never",
        pad_token_id=0,
        repetition_penalty=1.1,
        no_repeat_ngram_size=3,
    ).save_pretrained(tmp_path)
    assert "transformers_version" in json.loads((tmp_path / "generation_config.json").read_text())
    config = P.GenerationConfig.from_json_file(tmp_path / "generation_config.json")
    assert config == P.GenerationConfig(
        do_sample=True,
        top_p=0.9,
        temperature=0.6,
        max_new_tokens=30,
        eos_token_id=[1, 2],
        bad_words_ids=[[5, 6]],
        num_beams=4,
        early_stopping="never",
        pad_token_id=0,
        repetition_penalty=1.1,
        no_repeat_ngram_size=3,
    )
    assert config.top_k == 50 and config.eos_token_ids == [1, 2]
    config.validate()


def test_from_json_file_errors(tmp_path):
    with pytest.raises(LmforgeError, match="does not exist"):
        P.GenerationConfig.from_json_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LmforgeError, match="not valid JSON"):
        P.GenerationConfig.from_json_file(tmp_path / "bad.json")


def test_dict_round_trip_and_update():
    config = P.GenerationConfig(top_k=10, eos_token_id=2)
    assert P.GenerationConfig.from_dict(config.to_dict()) == config
    assert P.GenerationConfig.from_dict({"top_k": None, "transformers_version": "4.0"}).top_k == 50
    updated = config.update(top_k=3, do_sample=True)
    assert (updated.top_k, updated.do_sample, config.top_k, config.do_sample) == (3, True, 10, False)
    with pytest.raises(LmforgeError, match="top_kk"):
        config.update(top_kk=3)


def test_resolve_lengths():
    assert P.resolve_lengths(P.GenerationConfig(), 5) == (0, 25)
    assert P.resolve_lengths(P.GenerationConfig(max_length=12, min_length=3), 5) == (3, 12)
    assert P.resolve_lengths(P.GenerationConfig(max_length=12, max_new_tokens=4, min_new_tokens=2), 5) == (
        7,
        9,
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"do_sample": True, "temperature": 0.0},
        {"temperature": -1.0},
        {"num_beams": 2, "num_return_sequences": 3},
        {"num_return_sequences": 2},
        {"num_beams": 4, "num_beam_groups": 3},
        {"num_beams": 4, "num_beam_groups": 2, "do_sample": True},
        {"num_beams": 4, "diversity_penalty": 0.5},
        {"top_k": -1},
        {"typical_p": 0.0},
        {"typical_p": 1.2},
        {"min_p": -0.1},
        {"min_p": 1.5},
        {"repetition_penalty": 0.0},
        {"max_new_tokens": 0},
        {"early_stopping": "sometimes"},
        {"num_beam_groups": 0},
        {"num_beams": 0},
    ],
)
def test_validate_rejects(changes):
    with pytest.raises(LmforgeError) as error:
        P.GenerationConfig(**changes).validate()
    message = str(error.value)
    assert message.endswith(".") and "\n" not in message


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"temperature": 0.0},  # ignored by greedy decoding
        {"do_sample": True, "num_return_sequences": 3, "top_p": 1.0, "min_p": 0.0},
        {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5, "num_return_sequences": 4},
        {"num_beams": 3, "early_stopping": "never"},
    ],
)
def test_validate_accepts(changes):
    P.GenerationConfig(**changes).validate()


def test_build_processors_accepts_transformers_config():
    config = transformers.GenerationConfig(do_sample=True, top_p=0.5)  # unset fields are None there
    processors, warpers = P.build_processors(config, 2)
    assert processors == [] and [type(w).__name__ for w in warpers] == [
        "TopKLogitsWarper",
        "TopPLogitsWarper",
    ]
    assert warpers[0].top_k == 50
