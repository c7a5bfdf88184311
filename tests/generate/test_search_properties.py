"""Defining properties of diverse (group) beam search and contrastive search, which transformers 5
no longer ships, checked on table-driven sessions (no model) and hand-computed cases."""

import math

import pytest
import torch
from generation_models import TableSession

from lmforge.generate.diverse import (
    contrastive_scores,
    contrastive_search,
    degeneration_penalty,
    group_beam_search,
    hamming_diversity,
)
from lmforge.generate.processors import GenerationConfig
from lmforge.generate.search import StoppingCriteria, beam_search, greedy_or_sample

V = 12


def table(seed=0):
    return torch.randn(V, V, generator=torch.Generator().manual_seed(seed)) * 2


def run(search, config, prompts, logits_table, new=6, **kw):
    session = TableSession(logits_table, kw.pop("hidden", None), output_hidden=kw.pop("output_hidden", False))
    ids = torch.tensor(prompts)
    logits = session.start(ids, None, new)
    stopping = StoppingCriteria(ids.shape[1], new, config.eos_token_ids)
    return search(session, logits, config, stopping, 0, **kw)


def rows(out):
    return [seq[:n].tolist() for seq, n in zip(out.sequences, out.lengths)]


def test_hamming_diversity_subtracts_penalty_per_earlier_choice():
    log_probs = torch.zeros(1, 2, 4)
    out = hamming_diversity(log_probs, torch.tensor([[1, 1, 3]]), penalty=0.5)
    assert out[0, 0].tolist() == [0.0, -1.0, 0.0, -0.5]
    assert torch.equal(out[0, 0], out[0, 1])
    assert torch.equal(hamming_diversity(log_probs, torch.empty(1, 0, dtype=torch.long), 0.5), log_probs)


def test_groups_choose_different_tokens_at_every_step_under_a_large_penalty():
    config = GenerationConfig(num_beams=4, num_beam_groups=4, diversity_penalty=1e3, num_return_sequences=4)
    out = run(group_beam_search, config, [[3], [5]], table())
    for prompt in range(2):
        group_rows = rows(out)[prompt * 4:(prompt + 1) * 4]
        for step in zip(*group_rows):
            assert len(set(step)) == 4  # each group avoided the tokens of the groups before it


def test_first_group_is_a_plain_beam_search_and_penalty_zero_repeats_it():
    t = table(1)
    plain = run(beam_search, GenerationConfig(num_beams=2, num_return_sequences=2), [[4]], t)
    diverse = run(group_beam_search, GenerationConfig(num_beams=6, num_beam_groups=3, diversity_penalty=2.0,
                                                      num_return_sequences=6), [[4]], t)
    # group 0 sees no penalty, so its hypotheses (with their scores) are among the final ones
    assert plain.scores.max() == pytest.approx(diverse.scores.max())
    assert rows(plain)[0] == rows(diverse)[0]
    same = run(group_beam_search, GenerationConfig(num_beams=6, num_beam_groups=3, num_return_sequences=6), [[4]], t)
    assert rows(same) == [r for r in rows(plain) for _ in range(3)]  # three identical groups


def test_penalty_pushes_later_groups_away_from_the_best_sequence():
    t = table(2)
    config = GenerationConfig(num_beams=2, num_beam_groups=2, diversity_penalty=1e3, num_return_sequences=2)
    first, second = rows(run(group_beam_search, config, [[0]], t))
    assert all(a != b for a, b in zip(first, second))


def test_one_group_equals_beam_search():
    t = table(3)
    config = GenerationConfig(num_beams=3, num_return_sequences=3, eos_token_id=[5], length_penalty=0.7)
    a, b = run(beam_search, config, [[1], [2]], t), run(group_beam_search, config, [[1], [2]], t)
    assert rows(a) == rows(b) and torch.allclose(a.scores, b.scores)


def test_degeneration_penalty_hand_computed():
    context = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # two context tokens
    candidates = torch.tensor([[[1.0, 1.0], [3.0, 0.0], [-1.0, 0.0]]])
    mask = torch.tensor([[1, 1]])
    penalty = degeneration_penalty(context, mask, candidates)
    assert penalty[0].tolist() == pytest.approx([1 / math.sqrt(2), 1.0, 0.0], abs=1e-6)
    only_first = degeneration_penalty(context, torch.tensor([[1, 0]]), candidates)  # padding is ignored
    assert only_first[0].tolist() == pytest.approx([1 / math.sqrt(2), 1.0, -1.0], abs=1e-6)


def test_contrastive_score_formula():
    probs, penalty = torch.tensor([0.6, 0.4]), torch.tensor([1.0, 0.0])
    assert contrastive_scores(probs, penalty, 0.5).tolist() == pytest.approx([-0.2, 0.2])
    assert contrastive_scores(probs, penalty, 0.0).tolist() == pytest.approx([0.6, 0.4])


def contrastive_case():
    """Token 0 is the prompt; 1 (p=0.6) repeats its hidden state, 2 (p=0.4) is orthogonal to it."""
    logits = torch.full((3, 3), -30.0)
    logits[:, 1], logits[:, 2] = math.log(0.6), math.log(0.4)
    hidden = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    return logits, hidden


@pytest.mark.parametrize("alpha, expected", [(0.5, 2), (0.1, 1)])
def test_contrastive_search_trades_probability_against_degeneration(alpha, expected):
    # alpha 0.5: token 1 scores 0.5*0.6 - 0.5*1 = -0.2, token 2 scores 0.5*0.4 - 0 = 0.2
    # alpha 0.1: token 1 scores 0.9*0.6 - 0.1 = 0.44, token 2 scores 0.9*0.4 = 0.36
    logits, hidden = contrastive_case()
    config = GenerationConfig(penalty_alpha=alpha, top_k=2)
    out = run(contrastive_search, config, [[0]], logits, new=1, hidden=hidden, output_hidden=True)
    assert rows(out) == [[expected]]


def test_contrastive_search_keeps_the_chosen_candidates_state():
    logits, hidden = contrastive_case()
    config = GenerationConfig(penalty_alpha=0.5, top_k=2)
    out = run(contrastive_search, config, [[0], [0]], logits, new=3, hidden=hidden, output_hidden=True)
    # after 2 the context holds both directions: 1 and 2 are equally degenerate, so probability wins
    assert rows(out) == [[2, 1, 1], [2, 1, 1]]
    greedy = run(greedy_or_sample, GenerationConfig(), [[0]], logits, new=3)
    assert rows(greedy) == [[1, 1, 1]]
