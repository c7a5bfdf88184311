"""IncrementalDecoder against one-shot decoding with a byte-level BPE tokenizer trained here.

The tokenizer has a small vocabulary, so CJK characters and emoji are split over several tokens and
a push often ends in the middle of a character.
"""

import functools

from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.generate.streaming import IncrementalDecoder

CORPUS = [
    "The quick brown fox jumps over the lazy dog. 🦊🐶 Ünïcödé façade, naïve café.",
    "日本語のテキストと中文文本，还有한국어 텍스트。 Emoji: 😀😃😄👍🏽👨‍👩‍👧 and ∑∫√π.",
    "Streaming text must never split a character: 字符 🎉 ε ß ø.",
] * 20
SPECIAL = "<eos>"


@functools.lru_cache(maxsize=1)
def byte_bpe() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[SPECIAL],
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


# Arbitrary Unicode, with multi-byte characters drawn often.
texts = st.text(
    st.one_of(st.characters(codec="utf-8"), st.sampled_from(list("字符日本語🎉😀👍🏽é ßa\n"))), max_size=40
)


def stream(ids: list[int], skip_special_tokens: bool = True, context: list[int] = ()) -> list[str]:
    decoder = IncrementalDecoder(byte_bpe().decode, skip_special_tokens, context_ids=context)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


def test_characters_are_split_across_tokens():
    tokenizer = byte_bpe()
    ids = tokenizer.encode("字符 🎉").ids
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    pieces = stream(ids)
    assert "".join(pieces) == "字符 🎉"
    assert all("\ufffd" not in piece for piece in pieces)
    assert "" in pieces[:-1]  # something was held back until its character completed


@settings(max_examples=100, deadline=None)
@given(texts)
def test_stream_equals_decode(text):
    tokenizer = byte_bpe()
    ids = tokenizer.encode(text).ids
    pieces = stream(ids)
    assert "".join(pieces) == tokenizer.decode(ids) == text
    if "\ufffd" not in text:
        assert all("\ufffd" not in piece for piece in pieces)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 319), max_size=30), st.booleans())
def test_stream_equals_decode_for_any_ids(ids, skip_special_tokens):
    """Arbitrary ids (invalid UTF-8, special tokens) still concatenate to the one-shot decode."""
    decoded = byte_bpe().decode(ids, skip_special_tokens=skip_special_tokens)
    assert "".join(stream(ids, skip_special_tokens)) == decoded


@settings(max_examples=60, deadline=None)
@given(texts, texts)
def test_context_is_not_emitted(prompt, continuation):
    tokenizer = byte_bpe()
    context, ids = tokenizer.encode(prompt).ids, tokenizer.encode(continuation).ids
    assert "".join(stream(ids, context=context)) == continuation


def test_special_tokens():
    tokenizer = byte_bpe()
    ids = tokenizer.encode("ab").ids + [tokenizer.token_to_id(SPECIAL)]
    assert "".join(stream(ids, skip_special_tokens=True)) == "ab"
    assert "".join(stream(ids, skip_special_tokens=False)) == "ab<eos>"


def test_context_keeps_sentencepiece_leading_space():
    tokenizer = Tokenizer(
        models.WordLevel({"▁Once": 0, "▁upon": 1, "▁there": 2, "<unk>": 3}, unk_token="<unk>")
    )
    tokenizer.decoder = decoders.Metaspace()
    alone = IncrementalDecoder(tokenizer.decode)
    assert alone.push(2) == "there"  # decoded on its own, the first word loses its space
    after_prompt = IncrementalDecoder(tokenizer.decode, context_ids=[0, 1])
    assert [after_prompt.push(2), after_prompt.push(2), after_prompt.flush()] == [" there", " there", ""]


def test_flush_releases_incomplete_character_and_decoding_continues():
    tokenizer = byte_bpe()
    emoji = tokenizer.encode("🎉").ids
    assert len(emoji) > 1
    decoder = IncrementalDecoder(tokenizer.decode)
    assert decoder.push(emoji[0]) == ""
    assert decoder.flush().endswith("\ufffd")
    assert decoder.flush() == ""
    assert decoder.push(tokenizer.encode("a").ids[0]) == "a"
