"""Export a GPT-2 or Llama-family model to GGUF (llama.cpp's format), written with the `gguf` package.

Tensor names, metadata keys and layouts follow llama.cpp's own converter (convert_hf_to_gguf.py):

- GPT-2 (`gpt2`): token_embd, position_embd, blk.N.{attn_norm, attn_qkv, attn_output, ffn_norm, ffn_up, ffn_down},
  output_norm, output (the tied head written out as its own tensor, as the converter does);
- Llama family (`llama`: llama, mistral, and qwen2 as `qwen2`): lmforge's fused q/k/v and gate/up split back into
  attn_q/attn_k/attn_v and ffn_gate/ffn_up; q and k rows permuted from Hugging Face's rotate-half order to the
  interleaved pairs llama.cpp's llama rotates (the converter's `permute`; qwen2 keeps NEOX order).

Weights are (out, in) as nn.Linear holds them (GGUF's ne = [in, out]). `--type f32|f16|q8_0` applies to
matrices; vectors (norms, biases) stay float32, as the converter leaves them. A quantized lmforge model is
exported from its dequantized weights. The tokenizer goes in as llama.cpp's byte-level BPE ("gpt2" tokenizer
model: tokens, types, merges, special ids); other tokenizer kinds are refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_path

TYPES = ("f32", "f16", "q8_0")
ARCHITECTURES = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "qwen2"}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise LmforgeError("GGUF export needs the gguf package (llama.cpp's writer): pip install gguf") from None
    return gguf


def _weight(module: nn.Module) -> torch.Tensor:
    """The float (out, in) weight of a linear layer (dequantized for a QuantLinear)."""
    if getattr(module, "quantized", False):
        return module.dequantized()
    return module.weight.detach()


def _permute_rotary(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face's rotate-half row order of q or k, per head, to llama.cpp's interleaved pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """llama.cpp's tensor name -> float32 tensor, for a GPT-2 or Llama-family lmforge model."""
    c = model.config
    arch = ARCHITECTURES.get(c.family)
    if arch is None or getattr(model, "is_encoder_decoder", False):
        raise LmforgeError(f"GGUF export covers GPT-2 and the Llama family (llama, mistral, qwen2), not {c.family}")
    if getattr(model, "adapter_set", None) and model.adapter_set.adapters:
        raise LmforgeError("the model holds adapters; merge the LoRA adapter first (lmforge merge), then export")
    out: dict[str, torch.Tensor] = {"token_embd.weight": model.wte.weight.detach()}
    if arch == "gpt2":
        out["position_embd.weight"] = model.wpe.weight.detach()
    for i, block in enumerate(model.blocks):
        p = f"blk.{i}."
        norms = [("attn_norm", block.ln1), ("ffn_norm", block.ln2)]
        for name, norm in norms:
            out[p + name + ".weight"] = norm.weight.detach()
            if getattr(norm, "bias", None) is not None:
                out[p + name + ".bias"] = norm.bias.detach()
        qkv, proj, fc, down = block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj
        if arch == "gpt2":
            linears = [("attn_qkv", _weight(qkv), _bias(qkv)), ("attn_output", _weight(proj), _bias(proj)),
                       ("ffn_up", _weight(fc), _bias(fc)), ("ffn_down", _weight(down), _bias(down))]
        else:
            sizes = [c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.n_kv_head * c.head_dim]
            q, k, v = _weight(qkv).split(sizes)
            qb, kb, vb = _bias(qkv).split(sizes) if _bias(qkv) is not None else (None, None, None)
            if arch == "llama":
                q, k = _permute_rotary(q, c.n_head), _permute_rotary(k, c.n_kv_head)
                qb = _permute_rotary(qb, c.n_head) if qb is not None else None
                kb = _permute_rotary(kb, c.n_kv_head) if kb is not None else None
            gate, up = _weight(fc).chunk(2)
            linears = [("attn_q", q, qb), ("attn_k", k, kb), ("attn_v", v, vb),
                       ("attn_output", _weight(proj), _bias(proj)),
                       ("ffn_gate", gate, None), ("ffn_up", up, None), ("ffn_down", _weight(down), _bias(down))]
        for name, weight, bias in linears:
            out[p + name + ".weight"] = weight
            if bias is not None:
                out[p + name + ".bias"] = bias
    out["output_norm.weight"] = model.ln_f.weight.detach()
    if getattr(model.ln_f, "bias", None) is not None:
        out["output_norm.bias"] = model.ln_f.bias.detach()
    out["output.weight"] = _weight(model.lm_head)
    return {name: t.float().contiguous() for name, t in out.items()}


def _bias(linear: nn.Module) -> torch.Tensor | None:
    return linear.bias.detach() if linear.bias is not None else None


def write_gguf(model: nn.Module, tokenizer, path: str | os.PathLike, type: str = "f32", name: str | None = None) -> Path:
    """Write `model` and its byte-level BPE `tokenizer` to the GGUF file `path` (atomically)."""
    gguf = _gguf()
    if type not in TYPES:
        raise LmforgeError(f"unknown GGUF type {type!r}; choose one of {', '.join(TYPES)}")
    tensors = gguf_tensors(model)
    if tokenizer is None:
        raise LmforgeError("the model has no tokenizer (tokenizer.json); llama.cpp needs one in the GGUF file")
    c = model.config
    arch = ARCHITECTURES[c.family]
    path = Path(path)
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}[type]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[type]
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_name(name or path.stem)
        writer.add_file_type(file_type)
        writer.add_context_length(c.block_size)
        writer.add_embedding_length(c.n_embd)
        writer.add_feed_forward_length(c.intermediate_size)
        writer.add_block_count(c.n_layer)
        writer.add_head_count(c.n_head)
        if arch == "gpt2":
            writer.add_layer_norm_eps(c.norm_eps)
        else:
            writer.add_head_count_kv(c.n_kv_head)
            writer.add_layer_norm_rms_eps(c.norm_eps)
            writer.add_rope_freq_base(c.rope_theta)
            writer.add_rope_dimension_count(c.head_dim)
            writer.add_key_length(c.head_dim)
            writer.add_value_length(c.head_dim)
        writer.add_vocab_size(c.vocab_size)
        _add_tokenizer(writer, gguf, tokenizer, c)
        for tensor_name, tensor in tensors.items():
            data = tensor.numpy()
            if tensor.dim() == 1 or type == "f32":
                writer.add_tensor(tensor_name, data)
            elif type == "f16":
                writer.add_tensor(tensor_name, data.astype("float16"))
            else:
                if data.shape[-1] % 32:
                    raise LmforgeError(f"q8_0 needs rows whose length is a multiple of 32; {tensor_name} has "
                                       f"{data.shape[-1]}: export f16 or f32")
                writer.add_tensor(tensor_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _add_tokenizer(writer, gguf, tokenizer, c) -> None:
    """llama.cpp's "gpt2" (byte-level BPE) tokenizer: every id up to the model's vocabulary, merges, specials."""
    if tokenizer.kind != "bpe":
        raise LmforgeError(f"GGUF export writes byte-level BPE tokenizers; this one is {tokenizer.kind}")
    data = json.loads(tokenizer.to_json_str())
    pre = data.get("pre_tokenizer") or {}
    if (pre.get("type") != "ByteLevel" and not any(p.get("type") == "ByteLevel" for p in pre.get("pretokenizers", []))):
        raise LmforgeError("GGUF export writes byte-level BPE tokenizers (GPT-2's kind); this BPE is not byte-level")
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    by_id = {i: t for t, i in vocab.items()}
    added = {t.content: t.special for t in tokenizer.backend.get_added_tokens_decoder().values()}
    tokens, types = [], []
    for i in range(c.vocab_size):
        token = by_id.get(i)
        if token is None:  # the model's vocabulary is padded beyond the tokenizer's
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added.get(token) else
                         gguf.TokenType.USER_DEFINED if token in added else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for role, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("pad", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{role}_token_id") if getattr(tokenizer, f"{role}_token_id") is not None \
            else getattr(c, f"{role}_token_id")
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(False)
