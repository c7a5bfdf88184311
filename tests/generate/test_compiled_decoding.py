"""compile=True: decoding steps compiled by torch.compile over a fixed-size cache give the eager logits
(to float rounding) on left-padded batches, through beam reordering, for learned-position and rotary
(grouped-query) models, with packed weights from 4 rows on; what compile does not support is refused
with one sentence."""

import pytest
import torch

import lmforge
from hf_models import left_padded_batch, save_tiny
from lmforge.errors import LmforgeError
from lmforge.generate.api import generate
from lmforge.generate.session import COMPILED_CAPACITY_STEP, DecoderOnlySession

STEPS = 6


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    save_tiny(request.param, folder)
    return lmforge.load(folder).model


def test_compiled_steps_match_eager_logits(model):
    ids, mask = left_padded_batch(seed=0, batch=3, length=10)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        eager, compiled = DecoderOnlySession(model), DecoderOnlySession(model, compile=True)
        a, b = eager.start(ids, mask, STEPS), compiled.start(ids, mask, STEPS)
        assert compiled.cache.max_len == COMPILED_CAPACITY_STEP  # 10 + 6 rounded up, below the context of 64
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
        for step in range(STEPS):
            if step == 2:  # beam-style reshuffle of the rows, same batch size, after the graph is warm
                index = torch.tensor([2, 0, 0])
                eager.reorder(index)
                compiled.reorder(index)
            tokens = torch.randint(3, 90, (3,), generator=g)
            a, b = eager.step(tokens), compiled.step(tokens)
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


@pytest.mark.parametrize("rows", [2, 4])  # 4 rows: the compiled graph calls MKL's products on packed weights
def test_generate_with_compile_gives_the_eager_tokens(model, rows):
    ids = left_padded_batch(seed=1, batch=1, length=8)[0]
    eager = generate(model, ids, max_new_tokens=STEPS, ignore_eos=True, num_beams=rows)
    compiled = generate(model, ids, max_new_tokens=STEPS, ignore_eos=True, num_beams=rows, compile=True)
    assert compiled.output.sequences.tolist() == eager.output.sequences.tolist()
    torch.testing.assert_close(compiled.output.scores, eager.output.scores, rtol=0, atol=1e-4)


def test_compile_refuses_contrastive_search(model):
    with pytest.raises(LmforgeError, match="contrastive"):
        generate(model, [[5, 6, 7]], max_new_tokens=3, penalty_alpha=0.6, top_k=4, compile=True)


def test_compile_refuses_encoder_decoder_models():
    from lmforge.config import encdec_preset
    from lmforge.models.encdec import EncoderDecoderLM

    model = EncoderDecoderLM(encdec_preset("tiny-bart", vocab_size=50)).eval()
    with pytest.raises(LmforgeError, match="decoder-only"):
        generate(model, [[5, 6, 7]], max_new_tokens=3, compile=True)


def test_compiled_steps_follow_weight_updates(tmp_path):
    """A weight changed in place after a compiled generation (as training between samples does) is used
    by the next one: the packed copies are remade and the graph does not keep the old values."""
    save_tiny("gpt2", tmp_path)
    model = lmforge.load(tmp_path).model
    ids = left_padded_batch(seed=2, batch=1, length=6)[0]
    generate(model, ids, max_new_tokens=4, ignore_eos=True, num_beams=4, compile=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    eager = generate(model, ids, max_new_tokens=STEPS, ignore_eos=True, num_beams=4)
    compiled = generate(model, ids, max_new_tokens=STEPS, ignore_eos=True, num_beams=4, compile=True)
    assert compiled.output.sequences.tolist() == eager.output.sequences.tolist()
    torch.testing.assert_close(compiled.output.scores, eager.output.scores, rtol=0, atol=1e-4)


def test_one_compilation_serves_every_step_of_a_generation(model):
    """The written length is dynamic from the first compiled step: a generation compiles at most one graph
    for its (batch, capacity), and a later generation of another length in the same capacity compiles none."""
    from torch._dynamo.utils import counters

    ids = left_padded_batch(seed=3, batch=2, length=5)[0]
    before = counters["stats"]["unique_graphs"]
    first = generate(model, ids, max_new_tokens=9, ignore_eos=True, compile=True)
    assert counters["stats"]["unique_graphs"] - before <= 1
    middle = counters["stats"]["unique_graphs"]
    second = generate(model, ids, max_new_tokens=13, ignore_eos=True, compile=True)
    assert counters["stats"]["unique_graphs"] == middle
    eager = generate(model, ids, max_new_tokens=13, ignore_eos=True)
    assert second.output.sequences.tolist() == eager.output.sequences.tolist()
    assert first.output.sequences.tolist() == eager.output.sequences[:, :9].tolist()


def test_sessions_views_and_other_models_of_the_same_structure_compile_nothing_new(model, tmp_path):
    """Every compiled session runs its own view of the model (new module objects); the graph compiled for the
    first one serves the next, and another model of the same structure, beam reorders included."""
    from torch._dynamo.utils import counters

    save_tiny(model.config.family, tmp_path, seed=7)
    other = lmforge.load(tmp_path).model
    ids = left_padded_batch(seed=8, batch=2, length=5)[0]
    generate(model, ids, max_new_tokens=5, ignore_eos=True, num_beams=4, compile=True)
    before = counters["stats"]["unique_graphs"]
    for m in (model, other):
        compiled = generate(m, ids, max_new_tokens=5, ignore_eos=True, num_beams=4, compile=True)
        eager = generate(m, ids, max_new_tokens=5, ignore_eos=True, num_beams=4)
        assert compiled.output.sequences.tolist() == eager.output.sequences.tolist()
    assert counters["stats"]["unique_graphs"] == before


def test_guards_are_checked_again_for_another_model_and_batch(tmp_path):
    """Steps after the first two skip dynamo's guards; a new generation (another model of the same shapes,
    then another batch size) is checked again and decodes with its own weights."""
    ids = left_padded_batch(seed=4, batch=2, length=6)[0]
    for seed in (0, 1):
        save_tiny("gpt2", tmp_path / str(seed), seed=seed)
        model = lmforge.load(tmp_path / str(seed)).model
        for rows in (ids, ids[:1]):
            compiled = generate(model, rows, max_new_tokens=STEPS, ignore_eos=True, compile=True)
            eager = generate(model, rows, max_new_tokens=STEPS, ignore_eos=True)
            assert compiled.output.sequences.tolist() == eager.output.sequences.tolist()


def test_past_the_recompile_limit_steps_run_eagerly(model):
    """When dynamo's recompile limit is reached a new shape runs eagerly, also after the first two steps
    (where guards are otherwise skipped), with the eager tokens."""
    ids = left_padded_batch(seed=5, batch=3, length=7)[0]  # a batch no other test compiles
    with torch._dynamo.config.patch(recompile_limit=1):
        compiled = generate(model, ids, max_new_tokens=STEPS, ignore_eos=True, compile=True)
    eager = generate(model, ids, max_new_tokens=STEPS, ignore_eos=True)
    assert compiled.output.sequences.tolist() == eager.output.sequences.tolist()


def test_owned_rows_are_settled_before_a_batch_change(model):
    """After beam reorders a compiled session's rows point into other cache rows; a reorder to another batch
    size first moves every row's keys/values into its own cache row. Logits stay the eager ones."""
    ids, mask = left_padded_batch(seed=6, batch=3, length=8)
    g = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        eager, compiled = DecoderOnlySession(model), DecoderOnlySession(model, compile=True)
        eager.start(ids, mask, STEPS), compiled.start(ids, mask, STEPS)
        for index in [None, [2, 0, 0], [1, 1, 2], [0, 2, 2, 1, 1], None, [4, 0, 1, 1, 3]]:
            if index is not None:
                eager.reorder(torch.tensor(index))
                compiled.reorder(torch.tensor(index))
            tokens = torch.randint(3, 90, (eager.batch_size,), generator=g)
            torch.testing.assert_close(compiled.step(tokens), eager.step(tokens), rtol=0, atol=1e-5)
        assert compiled.steps.owner is not None  # the last reorder kept the batch size
