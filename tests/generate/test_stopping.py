"""StopStrings against decoding everything generated so far, and truncate_at_stop_string."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models

from lmforge.errors import LmforgeError
from lmforge.generate.stopping import StopStrings, truncate_at_stop_string

# Tokens of 0 to 3 characters, including multi-byte ones, an empty one and a skipped special token.
PIECES = ["", "a", "b", "ab", "ba", "字", "符🎉", "\n", "\n\n", "🎉a", "xyz", "<eos>"]
SPECIAL_ID = PIECES.index("<eos>")


def decode(ids: list[int]) -> str:
    return "".join(PIECES[i] for i in ids if i != SPECIAL_ID)


# Zero-character tokens are drawn often so that the decoded tail is regularly too short.
tokens = st.one_of(st.sampled_from([0, SPECIAL_ID]), st.integers(0, len(PIECES) - 1))
stop_lists = st.lists(
    st.text(st.sampled_from("ab字符🎉\nxyz"), min_size=1, max_size=4), min_size=1, max_size=3
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.lists(tokens, min_size=30, max_size=30), min_size=1, max_size=3),
    stop_lists,
    st.integers(0, 4),
    st.sampled_from([None, 1, 2, 3]),
)
def test_matches_full_decode_until_the_first_stop(rows, stops, prompt_len, window):
    """Each step, a row is reported finished exactly when its whole generated text holds a stop
    string, up to the first such step (after which generation would have ended). The tail window
    only affects speed, so small windows must give the same answers."""
    input_ids = torch.tensor(rows)
    criteria = StopStrings(stops, decode)
    if window is not None:
        criteria.window = window
    already_stopped = [False] * len(rows)
    for seq_len in range(prompt_len, input_ids.shape[1] + 1):
        finished = criteria(input_ids[:, :seq_len], prompt_len).tolist()
        for row, ids in enumerate(rows):
            expected = any(s in decode(ids[prompt_len:seq_len]) for s in stops)
            if not already_stopped[row]:
                assert finished[row] == expected
            already_stopped[row] |= expected


def test_zero_character_tokens_between_parts_of_a_stop_string():
    a, b = PIECES.index("a"), PIECES.index("b")
    ids = torch.tensor([[a] + [SPECIAL_ID] * 40 + [b]])
    assert StopStrings("ab", decode)(ids, 0).tolist() == [True]


def test_prompt_and_inactive_rows_are_ignored():
    a, b = PIECES.index("a"), PIECES.index("b")
    ids = torch.tensor([[a, b, PIECES.index("xyz")], [a, a, b]])
    criteria = StopStrings(["ab"], decode)
    assert criteria(ids, prompt_len=2).tolist() == [False, False]
    assert criteria(ids, prompt_len=1).tolist() == [False, True]
    assert criteria(ids, prompt_len=1, active=torch.tensor([True, False])).tolist() == [False, False]
    assert criteria(ids, prompt_len=3).tolist() == [False, False]


def test_works_with_a_real_tokenizer_decode():
    tokenizer = Tokenizer(models.WordLevel({"Hello": 0, "world": 1, "User": 2, ":": 3, "<unk>": 4}, "<unk>"))
    criteria = StopStrings(["User:"], tokenizer.decode)  # WordLevel decode joins tokens with spaces
    assert criteria(torch.tensor([[0, 1, 2, 3]]), 1).tolist() == [False]
    assert StopStrings(["world User"], tokenizer.decode)(torch.tensor([[0, 1, 2, 3]]), 1).tolist() == [True]


@pytest.mark.parametrize(
    ("text", "stops", "include", "expected"),
    [
        ("Hello\nUser: hi", ["User:"], False, "Hello\n"),
        ("Hello\nUser: hi", "User:", True, "Hello\nUser:"),
        ("no stop here", ["###"], False, "no stop here"),
        ("a##b###c", ["###", "b#"], False, "a##"),  # "b#" ends first
        ("xab", ["ab", "b"], False, "x"),  # same end: the longer, earlier-starting one
        ("xab", ["ab", "b"], True, "xab"),
    ],
)
def test_truncate_at_stop_string(text, stops, include, expected):
    assert truncate_at_stop_string(text, stops, include_stop=include) == expected


@pytest.mark.parametrize("stops", [[], [""], ["ok", ""], ["\ufffd"]])
def test_invalid_stop_strings(stops):
    with pytest.raises(LmforgeError):
        StopStrings(stops, decode)
