"""GGUF export: read back with the gguf package's own reader, every tensor is the model's (exactly in f32, to f16
rounding, to q8_0's half a step), the metadata and the byte-level BPE tokenizer are llama.cpp's keys, and the
Llama q/k permutation leaves attention scores unchanged under llama.cpp's interleaved rotary. llama.cpp itself
(llama-cpp-python) runs the f32 export where it is installed."""

import json

import pytest
import torch

import lmforge
from hf_models import save_tiny_with_tokenizer
from lmforge.cli.main import main
from lmforge.models.layers import RotaryEmbedding, apply_rotary
from lmforge.quant.gguf_export import gguf_tensors
from lmforge.tokenizer import Tokenizer

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf") / "gpt2"
    save_tiny_with_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory, gpt2):
    import transformers as tf

    folder = tmp_path_factory.mktemp("gguf") / "llama"
    tok = Tokenizer.from_pretrained(gpt2)
    cfg = tf.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                         intermediate_size=96, max_position_embeddings=64, vocab_size=tok.vocab_size,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    tf.LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save(folder)
    return folder


def _read(path):
    reader = gguf.GGUFReader(path)
    tensors = {t.name: torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).reshape(
        [int(n) for n in reversed(t.shape)]) for t in reader.tensors}
    fields = {name: field.contents() for name, field in reader.fields.items()}
    return tensors, fields, {t.name: t.tensor_type.name for t in reader.tensors}


@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0"])
def test_gpt2_export_reads_back_as_the_model(gpt2, tmp_path, kind):
    out = tmp_path / "model.gguf"
    assert main(["export", "gguf", str(gpt2), str(out), "--type", kind]) == 0
    ckpt = lmforge.load(gpt2)
    expected = gguf_tensors(ckpt.model)
    tensors, fields, types = _read(out)
    assert tensors.keys() == expected.keys()
    assert len([n for n in tensors if n.startswith("blk.0.")]) == 12  # 2 norms, 4 linear layers, weight + bias
    torch.testing.assert_close(expected["blk.1.attn_qkv.weight"], ckpt.model.blocks[1].attn.qkv.weight)
    for name, tensor in tensors.items():
        want = expected[name]
        if kind == "f32" or want.dim() == 1:
            assert types[name] == "F32" and torch.equal(tensor, want), name
        elif kind == "f16":
            assert types[name] == "F16"
            torch.testing.assert_close(tensor, want, rtol=2 ** -10, atol=1e-6)
        else:  # blocks of 32, one float16 scale each: half a step (max |w| / 127 / 2), plus the scale's rounding
            assert types[name] == "Q8_0"  # to float16 (2**-11 relative) times up to 127 steps: 0.5 + 0.062 steps
            step = want.abs().view(-1, 32).amax(dim=1, keepdim=True) / 127
            assert bool(((tensor.view(-1, 32) - want.view(-1, 32)).abs() <= step * 0.57).all()), name
    c = ckpt.model.config
    assert fields["general.architecture"] == "gpt2"
    assert (fields["gpt2.block_count"], fields["gpt2.embedding_length"], fields["gpt2.context_length"],
            fields["gpt2.attention.head_count"]) == (c.n_layer, c.n_embd, c.block_size, c.n_head)
    tok = ckpt.tokenizer
    assert fields["tokenizer.ggml.model"] == "gpt2" and len(fields["tokenizer.ggml.tokens"]) == c.vocab_size
    assert fields["tokenizer.ggml.tokens"][5] == tok.id_to_token(5)
    merges = json.loads((gpt2 / "tokenizer.json").read_text())["model"]["merges"]
    assert fields["tokenizer.ggml.merges"][0] == (merges[0] if isinstance(merges[0], str) else " ".join(merges[0]))
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_token_id


def _interleaved_rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """llama.cpp's rotary for the llama architecture (rope type NORM): pairs of adjacent features rotate."""
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    angle = positions[:, None].float() * freqs  # (T, d/2)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = angle.cos(), angle.sin()
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def test_llama_export_gives_the_same_attention_scores_under_llama_cpp_rotary(llama, tmp_path):
    out = tmp_path / "llama.gguf"
    assert main(["export", "gguf", str(llama), str(out)]) == 0
    model = lmforge.load(llama).model
    c = model.config
    tensors, fields, _ = _read(out)
    assert fields["general.architecture"] == "llama" and fields["llama.attention.head_count_kv"] == c.n_kv_head
    assert fields["llama.rope.dimension_count"] == c.head_dim
    x = torch.randn(6, c.n_embd)
    positions = torch.arange(6)
    # lmforge (Hugging Face's rotate-half) on the fused qkv
    heads = (x @ model.blocks[0].attn.qkv.weight.detach().t()).view(6, -1, c.head_dim).transpose(0, 1)
    cos, sin = RotaryEmbedding(c.head_dim, c.rope_theta)(positions[None], torch.float32)
    rotated = apply_rotary(heads[None, : c.n_head + c.n_kv_head], cos, sin)[0]
    q, k = rotated[: c.n_head], rotated[c.n_head:]
    ours = q @ k.repeat_interleave(c.n_head // c.n_kv_head, dim=0).transpose(1, 2)
    # llama.cpp: the exported q and k, rotated in interleaved pairs
    gq = (x @ tensors["blk.0.attn_q.weight"].t()).view(6, c.n_head, c.head_dim).transpose(0, 1)
    gk = (x @ tensors["blk.0.attn_k.weight"].t()).view(6, c.n_kv_head, c.head_dim).transpose(0, 1)
    gq, gk = _interleaved_rotary(gq, positions, c.rope_theta), _interleaved_rotary(gk, positions, c.rope_theta)
    theirs = gq @ gk.repeat_interleave(c.n_head // c.n_kv_head, dim=0).transpose(1, 2)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    gate, up = model.blocks[0].mlp.fc.weight.detach().chunk(2)
    assert torch.equal(tensors["blk.0.ffn_gate.weight"], gate) and torch.equal(tensors["blk.0.ffn_up.weight"], up)
    assert torch.equal(tensors["blk.0.attn_v.weight"], model.blocks[0].attn.qkv.weight.detach()[-c.n_kv_head * c.head_dim:])


def test_unsupported_models_are_refused(tmp_path, capsys):
    from hf_models import save_tiny_seq2seq

    save_tiny_seq2seq("bart", tmp_path / "bart")
    capsys.readouterr()
    assert main(["export", "gguf", str(tmp_path / "bart"), str(tmp_path / "b.gguf")]) == 2
    assert "GPT-2 and the Llama family" in capsys.readouterr().err
    assert not (tmp_path / "b.gguf").exists()


def test_llama_cpp_gives_lmforge_greedy_tokens(gpt2, tmp_path):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (no prebuilt wheel here; it builds llama.cpp from source)")
    from lmforge.generate.api import generate

    out = tmp_path / "model.gguf"
    assert main(["export", "gguf", str(gpt2), str(out), "--type", "f32"]) == 0
    ckpt = lmforge.load(gpt2)
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, verbose=False)
    for prompt in ([5, 17, 42], [100, 3, 250, 7]):
        ours = generate(ckpt.model, torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                        ignore_eos=True).output.sequences[0, -8:].tolist()
        llm.reset()
        theirs = []
        for token in llm.generate(prompt, temp=0.0, top_k=1):
            theirs.append(token)
            if len(theirs) == 8:
                break
        assert theirs == ours
