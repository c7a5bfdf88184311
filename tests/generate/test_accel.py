"""The decoding speed-ups of generate/accel.py against their plain references, applied by sessions on their own
view of the model: the model is never changed, and sessions in several threads do not disturb each other."""

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lmforge
from hf_models import left_padded_batch, save_tiny
from lmforge.config import ModelConfig
from lmforge.generate.accel import (
    PackedLinear,
    decoding_attention,
    decoding_view,
    mkl_packing_available,
    pack_view,
)
from lmforge.generate.api import generate
from lmforge.generate.session import DecoderOnlySession
from lmforge.models.decoder import DecoderLM
from model_snapshot import model_snapshot


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_single_query_attention_matches_sdpa(heads, kv_heads, mask_kind):
    torch.manual_seed(0)
    B, L, D = 3, 7, 8
    q = torch.randn(B, heads, 1, D)
    k, v = torch.randn(B, kv_heads, L, D), torch.randn(B, kv_heads, L, D)
    mask = None
    if mask_kind == "bool":
        mask = torch.ones(B, 1, 1, L, dtype=torch.bool)
        mask[0, ..., :3] = False
    elif mask_kind == "float":
        mask = torch.randn(1, heads, 1, L)  # T5's position bias: per head, shared by the batch
    out = decoding_attention(q, k, v, mask, False, 0.0)
    groups = heads // kv_heads
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1),
                                         attn_mask=mask)
    torch.testing.assert_close(out, ref)


def tiny_gpt2() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig.for_family("gpt2", n_layer=2, n_head=2, n_embd=32, block_size=16,
                                            vocab_size=50)).eval()


@pytest.mark.skipif(not mkl_packing_available(), reason="this torch build has no MKL packed GEMM")
def test_packed_linears_give_the_same_outputs_and_are_skipped_when_weights_change():
    model = tiny_gpt2()
    view = decoding_view(model, compiled=False)
    layer = view.blocks[0].mlp.fc
    assert isinstance(layer, PackedLinear) and layer.base is model.blocks[0].mlp.fc
    x = torch.randn(4, 1, 32)
    with torch.inference_mode():
        plain = layer(x)
        pack_view(view, 4)
        assert layer.packed is not None and layer.rows == 4
        torch.testing.assert_close(layer(x), plain)
        other_rows = torch.randn(5, 1, 32)
        torch.testing.assert_close(layer(other_rows), F.linear(other_rows, layer.base.weight, layer.base.bias))
    with torch.no_grad():
        layer.base.weight.add_(1.0)  # a training step: the packed copy is stale and must not be used
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.base.weight, layer.base.bias))
    out = layer(x.requires_grad_())  # autograd never goes through the packed copy
    assert out.requires_grad
    pack_view(view, 2)  # below the threshold: no packs
    assert layer.packed is None


def assert_unchanged(model: nn.Module, snapshot: tuple) -> None:
    assert model_snapshot(model) == snapshot
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, (nn.Linear, PackedLinear)))


@pytest.mark.parametrize("compile", [False, True])
def test_a_session_never_changes_the_model(tmp_path, compile):
    save_tiny("gpt2", tmp_path)
    model = lmforge.load(tmp_path).model
    snapshot = model_snapshot(model)
    ids, mask = left_padded_batch(seed=0, batch=1, length=6)
    with torch.inference_mode():
        session = DecoderOnlySession(model, compile=compile)
        session.start(ids, mask, 4)
        session.reorder(torch.zeros(4, dtype=torch.long))  # 4 rows: packed weights
        for _ in range(3):
            session.step(torch.tensor([5, 6, 7, 8]))
        assert session._view is not None and session._view is not model
        assert_unchanged(model, snapshot)
        session.close()
    assert session._view is None
    assert_unchanged(model, snapshot)


DECODINGS = [dict(num_beams=4), dict(do_sample=True, top_k=20), dict(num_beams=1)]


@pytest.mark.parametrize("compile", [False, True])
def test_sessions_in_two_threads_give_the_tokens_each_gives_alone(tmp_path, compile):
    """Beam search (packed weights for 4 rows), sampling on 3 rows and greedy decoding over one model, each in
    its own thread, all at once and several times over: each gives the tokens it gives alone."""
    save_tiny("llama", tmp_path)
    model = lmforge.load(tmp_path).model
    ids, mask = left_padded_batch(seed=1, batch=3, length=7)
    jobs = [(ids[:1], None, DECODINGS[0]), (ids, mask, DECODINGS[1]), (ids[1:], mask[1:], DECODINGS[2])]

    def run(job):
        rows, rows_mask, params = job
        out = generate(model, rows, attention_mask=rows_mask, max_new_tokens=12, ignore_eos=True, seed=3,
                       compile=compile, **params)
        return out.output.sequences.tolist()

    alone = [run(job) for job in jobs]
    together: list[list] = [[] for _ in jobs]
    start = threading.Barrier(len(jobs))

    def worker(i):
        start.wait()
        for _ in range(3):
            together[i].append(run(jobs[i]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == [[tokens] * 3 for tokens in alone]
