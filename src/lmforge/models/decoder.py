"""DecoderLM: one decoder-only transformer for GPT-1, GPT-2, OPT and the Llama family (llama, mistral, qwen2).

Read top to bottom: attention, block, model. The family differences are knobs of `ModelConfig`:
learned or rotary positions, LayerNorm or RMSNorm, GELU/ReLU or SwiGLU, biases, grouped-query
attention, tied or untied output head.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.config import ModelConfig
from lmforge.errors import LmforgeError
from lmforge.models.cache import Attend, KVCache, RowCache, with_virtual_tokens
from lmforge.models.layers import (
    MLP,
    RotaryEmbedding,
    apply_rotary,
    attention,
    causal_padding_mask,
    init_gpt2_style,
    make_norm,
    scaled_residual_std,
)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                rope: tuple[torch.Tensor, torch.Tensor] | None, cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        heads = self.qkv(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, q + k + v heads, T, head_dim)
        if rope is not None:  # rotate queries and keys in one go
            qk, v = heads.split([self.n_head + self.n_kv_head, self.n_kv_head], dim=1)
            q, k = apply_rotary(qk, *rope).split([self.n_head, self.n_kv_head], dim=1)
        else:
            q, k, v = heads.split([self.n_head, self.n_kv_head, self.n_kv_head], dim=1)
        dropout = self.dropout if self.training else 0.0
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
            y = cache.attend(q, k, v, mask, is_causal, dropout)
        else:
            y = attention(q, k, v, mask, is_causal, dropout)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)); post-norm (GPT-1):
    norm(x + attn(x)), then norm(x + mlp(x))."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln1 = make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps, cfg.bias)
        self.attn = SelfAttention(cfg, layer)
        self.ln2 = make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps, cfg.bias)
        self.mlp = MLP(cfg.n_embd, cfg.intermediate_size, cfg.activation, cfg.gated_mlp, cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.post_norm = cfg.post_norm

    def forward(self, x, mask, is_causal, rope, cache):
        if self.post_norm:
            h = self.attn(x, mask, is_causal, rope, cache)
            x = self.ln1(x + (self.drop(h) if self.training else h))
            h = self.mlp(x)
            return self.ln2(x + (self.drop(h) if self.training else h))
        h = self.attn(self.ln1(x), mask, is_causal, rope, cache)
        x = x + (self.drop(h) if self.training else h)  # skipping the no-op call speeds up decoding
        h = self.mlp(self.ln2(x))
        return x + (self.drop(h) if self.training else h)


class DecoderLM(nn.Module):
    is_encoder_decoder = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.position == "learned":
            self.wpe = nn.Embedding(cfg.block_size + cfg.position_offset, cfg.n_embd)
            self.rotary = None
        else:
            self.wpe = None
            self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.Identity() if cfg.post_norm else make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps, cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.virtual_tokens = None  # positions every sequence starts with (prefix or prompt tuning: adapt/prefix.py)
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), zero biases, residual projections scaled by 1/sqrt(2 n_layer)."""
        std = self.config.initializer_range
        self.apply(lambda m: init_gpt2_style(m, std))
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, std=scaled_residual_std(std, self.config.n_layer))
            nn.init.normal_(block.mlp.proj.weight, std=scaled_residual_std(std, self.config.n_layer))
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.wte.weight

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings and self.wpe is not None:
            n -= self.wpe.weight.numel()
        return n

    def new_cache(self, batch: int, max_len: int, attend: Attend = attention) -> KVCache:
        """An empty cache with room for `max_len` positions (after the virtual tokens, which it holds, if any)."""
        p = self.wte.weight
        c = self.config
        return with_virtual_tokens(self, lambda capacity: KVCache(c.n_layer, batch, c.n_kv_head, capacity, c.head_dim,
                                                                  p.device, p.dtype, attend), max_len)

    def new_row_cache(self, attend: Attend = attention) -> RowCache:
        if self.virtual_tokens is not None:
            raise LmforgeError("continuous batching does not hold prefix or prompt-tuning tokens yet; merge a LoRA "
                               "adapter instead, or generate without the server")
        p = self.wte.weight
        c = self.config
        return RowCache(c.n_layer, c.n_kv_head, c.head_dim, p.device, p.dtype, attend)

    def hidden_states(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                      inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Final normed hidden states (B, T, n_embd) of the new tokens `input_ids` (or of the embeddings
        `inputs_embeds`, (B, T, n_embd), in their place).

        `attention_mask` (B, past + T) marks real tokens with 1 and left padding with 0, as in
        transformers; position ids then skip the padding. It may also be a ready boolean mask
        (B, 1, T, past + T), True where a query may attend to a key: `past` is then read from its size
        and `position_ids` default to past, past + 1, ... With a `cache`, the new keys and values are
        appended to it. Without one, a model with virtual tokens attends to them first (`past` is their
        number; a (B, T) `attention_mask` need not cover them).
        """
        cfg = self.config
        tokens = input_ids if input_ids is not None else inputs_embeds
        (B, T), device = tokens.shape[:2], tokens.device
        if cache is None and self.virtual_tokens is not None:
            cache, attention_mask = self.virtual_tokens.cache(self, B, attention_mask)
        if attention_mask is not None and attention_mask.dim() == 4:  # ready: (B, 1, T, past + T)
            past, padding = attention_mask.shape[-1] - T, None
            mask, is_causal = attention_mask, False
        else:
            past, padding = (cache.length if cache is not None else 0), attention_mask
            mask, is_causal = causal_padding_mask(attention_mask, past, T, device)
        total = past + T
        if total > cfg.block_size:
            raise LmforgeError(f"the sequence ({total} tokens) is longer than the model's context "
                               f"({cfg.block_size} tokens)")
        if cfg.sliding_window is not None and total > cfg.sliding_window:
            raise LmforgeError(f"the sequence ({total} tokens) exceeds the sliding window "
                               f"({cfg.sliding_window}); sliding-window attention is not supported")
        if position_ids is None:
            position_ids = positions_from_mask(padding, past, T, device)
        x, rope = self._embed(input_ids, position_ids, inputs_embeds)
        for block in self.blocks:
            x = block(x, mask, is_causal, rope, cache)
        if cache is not None:
            cache.advance(T)
        return self.ln_f(x)

    def _embed(self, input_ids: torch.Tensor | None, position_ids: torch.Tensor, inputs_embeds: torch.Tensor | None):
        """Token (+ learned position) embeddings, and the rotary (cos, sin) for rotary models (else None)."""
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(position_ids + self.config.position_offset)
        else:
            rope = self.rotary(position_ids, x.dtype)
        if self.training:
            x = self.drop(x)
        return x, rope

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab) — or (B, 1, vocab) for the last position only with `last_only`."""
        h = self.hidden_states(input_ids, attention_mask, position_ids, cache)
        if last_only:
            h = h[:, -1:]
        return self.lm_head(h)


def positions_from_mask(attention_mask: torch.Tensor | None, past: int, new: int,
                        device: torch.device) -> torch.Tensor:
    """Position ids of the new tokens: counting only real tokens, so left padding does not shift them."""
    if attention_mask is None:
        return torch.arange(past, past + new, device=device)[None]
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(attention_mask == 0, 1)
    return pos[:, past:past + new]
