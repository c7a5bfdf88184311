"""EncoderDecoderLM: one encoder-decoder transformer for BART and T5 (v1.0, v1.1, Flan-T5).

Read top to bottom: attention, T5's relative position bias, the layer, the stack (encoder or
decoder), the model. The family differences are knobs of `EncDecConfig`:
- positions: learned absolute ones (BART, stored shifted by 2) or a learned per-head bias on the
  attention scores indexed by bucketed relative distance (T5; computed once per stack and shared by
  its layers, bidirectional in the encoder, causal in the decoder);
- norms: post-norm LayerNorm plus a LayerNorm on the embeddings (BART), or pre-norm RMSNorm plus a
  final norm per stack (T5);
- feed-forward: GELU (BART), ReLU (T5 v1.0) or gated-GELU (T5 v1.1, Flan-T5); biases only in BART;
- attention scaled by 1/sqrt(head_dim) (BART) or not at all (T5 folds the scale into its init);
- output head: tied to the embeddings (BART; T5 v1.0, which rescales the decoder output by
  d_model**-0.5) or untied (T5 v1.1), plus BART's `final_logits_bias`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import EncDecConfig
from lmforge.errors import LmforgeError
from lmforge.models.cache import Attend, EncDecCache, with_virtual_tokens
from lmforge.models.layers import MLP, attention, causal_padding_mask, init_gpt2_style, make_norm


class Attention(nn.Module):
    """Multi-head attention: queries from x; keys and values from x (self) or the encoder output (cross)."""

    def __init__(self, cfg: EncDecConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        inner = cfg.n_head * cfg.head_dim
        self.q = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.kv = nn.Linear(cfg.d_model, 2 * inner, bias=cfg.bias)
        self.o = nn.Linear(inner, cfg.d_model, bias=cfg.bias)
        self.scale, self.dropout = cfg.attention_scale, cfg.attention_dropout

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, _ = x.shape
        k, v = self.kv(x).view(B, S, 2, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool = False,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None, cache: EncDecCache | None = None) -> torch.Tensor:
        """Self-attention when `kv` is None (appending to `cache` if given), else cross-attention over `kv`;
        with a `cache`, attention is its `attend`."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        if kv is None:
            kv = self.keys_values(x)
            if cache is not None:
                kv = cache.update(self.layer, *kv)
        attend = cache.attend if cache is not None else attention
        y = attend(q, *kv, mask, is_causal, self.dropout if self.training else 0.0, self.scale)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5's bucket of each key - query distance: exact for small distances, logarithmic up to max_distance."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = -relative_position.clamp(max=0)
    max_exact = num_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=max_exact) / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    """A learned bias per head and relative-distance bucket, added to the attention scores (T5)."""

    def __init__(self, cfg: EncDecConfig, bidirectional: bool):
        super().__init__()
        self.embedding = nn.Embedding(cfg.relative_attention_num_buckets, cfg.n_head)
        self.bidirectional = bidirectional
        self.num_buckets, self.max_distance = cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance

    def forward(self, new: int, past: int = 0) -> torch.Tensor:
        """The bias (1, heads, new, past + new) of queries at positions [past, past + new)."""
        device = self.embedding.weight.device
        q_pos = torch.arange(past, past + new, device=device)[:, None]
        k_pos = torch.arange(past + new, device=device)[None, :]
        buckets = relative_position_bucket(k_pos - q_pos, self.bidirectional, self.num_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1)[None]


class Layer(nn.Module):
    """Self-attention, cross-attention (decoder only) and feed-forward, each a residual sublayer."""

    def __init__(self, cfg: EncDecConfig, layer: int, cross: bool):
        super().__init__()
        self.post_norm = cfg.post_norm
        self.self_attn = Attention(cfg, layer)
        self.self_attn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.cross_attn = Attention(cfg, layer) if cross else None
        self.cross_attn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if cross else None
        self.mlp = MLP(cfg.d_model, cfg.d_ff, cfg.activation, cfg.gated_mlp, cfg.bias)
        self.mlp_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def residual(self, x: torch.Tensor, norm: nn.Module, sublayer) -> torch.Tensor:
        """Post-norm norm(x + f(x)) (BART) or pre-norm x + f(norm(x)) (T5)."""
        if self.post_norm:
            return norm(x + self.drop(sublayer(x)))
        return x + self.drop(sublayer(norm(x)))

    def forward(self, x, mask, is_causal, cache=None, memory=None, memory_mask=None):
        """`memory`: the encoder's hidden states, which a decoder layer attends to. With a `cache`, this
        layer's cross-attention keys/values are computed from it once and read from the cache afterwards."""
        x = self.residual(x, self.self_attn_norm, lambda h: self.self_attn(h, mask, is_causal, cache=cache))
        if self.cross_attn is not None:
            layer = self.self_attn.layer
            kv = cache.cross[layer] if cache is not None else None
            if kv is None:
                kv = self.cross_attn.keys_values(memory)
                if cache is not None:
                    cache.cross[layer] = kv
            x = self.residual(x, self.cross_attn_norm, lambda h: self.cross_attn(h, memory_mask, kv=kv, cache=cache))
        return self.residual(x, self.mlp_norm, self.mlp)


class Stack(nn.Module):
    """The encoder or the decoder: positions, layers, final norm. The token embedding is the model's (shared)."""

    def __init__(self, cfg: EncDecConfig, decoder: bool):
        super().__init__()
        self.cfg = cfg
        learned = cfg.position == "learned"
        self.positions = nn.Embedding(cfg.max_position_embeddings + cfg.position_offset, cfg.d_model) if learned else None
        self.relative_bias = None if learned else RelativePositionBias(cfg, bidirectional=not decoder)
        self.embedding_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if cfg.embedding_norm else None
        n_layer = cfg.n_decoder_layer if decoder else cfg.n_encoder_layer
        self.layers = nn.ModuleList(Layer(cfg, i, cross=decoder) for i in range(n_layer))
        self.final_norm = None if cfg.post_norm else make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool, past: int = 0,
                cache: EncDecCache | None = None, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states of the embedded tokens `x` (B, T, d_model) at positions [past, past + T).

        `mask` is a boolean attention mask for SDPA (or None, with `is_causal` for a plain causal one);
        T5's relative position bias is folded into it as a float mask.
        """
        T = x.shape[1]
        if self.positions is not None:
            if past + T > self.cfg.max_position_embeddings:
                raise LmforgeError(f"the sequence ({past + T} tokens) is longer than the model's positions "
                                   f"({self.cfg.max_position_embeddings} tokens)")
            x = x + self.positions(torch.arange(past, past + T, device=x.device) + self.cfg.position_offset)
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        x = self.drop(x)
        if self.relative_bias is not None:
            bias = self.relative_bias(T, past).to(x.dtype)
            if is_causal:  # only without a cache and padding: a plain lower-triangular mask
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            mask, is_causal = (bias if mask is None else bias.masked_fill(~mask, float("-inf"))), False
        for layer in self.layers:
            x = layer(x, mask, is_causal, cache, memory, memory_mask)
        if self.final_norm is not None:
            x = self.drop(self.final_norm(x))
        return x


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, 1, 1, S) boolean mask of the real source tokens for SDPA, or None when nothing is padded."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask[:, None, None, :].bool()


class EncoderDecoderLM(nn.Module):
    is_encoder_decoder = True

    def __init__(self, cfg: EncDecConfig):
        super().__init__()
        self.config = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg, decoder=False)
        self.decoder = Stack(cfg, decoder=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.register_buffer("final_logits_bias", torch.zeros(1, cfg.vocab_size) if cfg.final_logits_bias else None)
        # positions every source or decoder sequence starts with (prompt or prefix tuning: adapt/prefix.py)
        self.virtual_tokens = None
        self.init_weights()

    def init_weights(self) -> None:
        """T5: fan-in normal init scaled by initializer_factor (an untied head too); BART: N(0, initializer_range),
        zero biases."""
        c = self.config
        if c.family != "t5":
            self.apply(lambda m: init_gpt2_style(m, c.initializer_range))
        else:
            f = c.initializer_factor
            nn.init.normal_(self.shared.weight, std=f)
            # Tied, the head is rescaled by d_model ** -0.5. Untied, transformers draws it from N(0, 1), which
            # makes the first logits sqrt(d_model) too large; N(0, d_model ** -0.5) gives them unit variance.
            nn.init.normal_(self.lm_head.weight, std=f * (1.0 if c.tie_word_embeddings else c.d_model ** -0.5))
            for m in self.modules():
                if isinstance(m, Attention):
                    nn.init.normal_(m.q.weight, std=f * (c.d_model * c.head_dim) ** -0.5)
                    nn.init.normal_(m.kv.weight, std=f * c.d_model ** -0.5)
                    nn.init.normal_(m.o.weight, std=f * (c.n_head * c.head_dim) ** -0.5)
                elif isinstance(m, MLP):
                    nn.init.normal_(m.fc.weight, std=f * c.d_model ** -0.5)
                    nn.init.normal_(m.proj.weight, std=f * c.d_ff ** -0.5)
                elif isinstance(m, RelativePositionBias):
                    nn.init.normal_(m.embedding.weight, std=f * c.d_model ** -0.5)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings and self.encoder.positions is not None:
            n -= self.encoder.positions.weight.numel() + self.decoder.positions.weight.numel()
        return n

    def new_cache(self, batch: int, max_len: int, attend: Attend = attention) -> EncDecCache:
        """An empty decoder cache for `batch` sequences of up to `max_len` decoder tokens (after the virtual decoder
        tokens, which it holds, if any)."""
        c, p = self.config, self.shared.weight
        return with_virtual_tokens(self, lambda capacity: EncDecCache(c.n_decoder_layer, batch, c.n_head, capacity,
                                                                      c.head_dim, p.device, p.dtype, attend), max_len)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.shared(ids)
        return x * math.sqrt(self.config.d_model) if self.config.scale_embedding else x

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder hidden states (B, S, d_model); `attention_mask` marks real tokens with 1 (right padding). Virtual
        source tokens come first (S counts them): the encoder mask of later calls is the one
        `encoder_mask(attention_mask)` returns."""
        x = self.embed(input_ids)
        if self.virtual_tokens is not None:
            x, attention_mask = self.virtual_tokens.encoder_input(x, attention_mask)
        return self.encoder(x, padding_mask(attention_mask), is_causal=False)

    def encoder_mask(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The mask of the encoder's output for a source mask: with virtual source tokens, theirs in front."""
        if self.virtual_tokens is None or attention_mask is None:
            return attention_mask
        return self.virtual_tokens.encoder_input(None, attention_mask)[1]

    def decoder_hidden_states(self, decoder_input_ids: torch.Tensor, encoder_hidden: torch.Tensor | None,
                              encoder_mask: torch.Tensor | None = None,
                              decoder_attention_mask: torch.Tensor | None = None,
                              cache: EncDecCache | None = None) -> torch.Tensor:
        """Final normed decoder hidden states (B, T, d_model) of the new decoder tokens.

        `decoder_attention_mask` (B, past + T) marks real decoder tokens with 1; positions count
        from the first decoder token whatever the padding, as in transformers. With a `cache`, the
        new self-attention keys/values are appended to it, and the cross-attention keys/values are
        computed from `encoder_hidden` on the first call and reused afterwards (`encoder_hidden`
        may then be None); `encoder_mask` must be passed on every call.
        """
        B, T = decoder_input_ids.shape
        if cache is None and self.virtual_tokens is not None:
            cache, decoder_attention_mask = self.virtual_tokens.cache(self, B, decoder_attention_mask)
        past = cache.length if cache is not None else 0
        if encoder_hidden is None and (cache is None or cache.cross[0] is None):
            raise ValueError("decoding needs encoder_hidden unless the cache holds the cross-attention keys/values")
        mask, is_causal = causal_padding_mask(decoder_attention_mask, past, T, decoder_input_ids.device)
        h = self.decoder(self.embed(decoder_input_ids), mask, is_causal, past, cache, encoder_hidden,
                         padding_mask(encoder_mask))
        if cache is not None:
            cache.advance(T)
        return h

    def logits(self, decoder_hidden: torch.Tensor) -> torch.Tensor:
        """The output head over decoder hidden states (with T5's rescale and BART's final_logits_bias)."""
        if self.config.scale_decoder_outputs:
            decoder_hidden = decoder_hidden * self.config.d_model ** -0.5
        logits = self.lm_head(decoder_hidden)
        return logits if self.final_logits_bias is None else logits + self.final_logits_bias

    def decode(self, decoder_input_ids: torch.Tensor, encoder_hidden: torch.Tensor | None,
               encoder_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
               cache: EncDecCache | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) of the new decoder tokens; arguments as `decoder_hidden_states`."""
        return self.logits(self.decoder_hidden_states(decoder_input_ids, encoder_hidden, encoder_mask,
                                                      decoder_attention_mask, cache))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                decoder_input_ids: torch.Tensor, decoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) of every decoder position (teacher forcing)."""
        encoder_hidden = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, encoder_hidden, self.encoder_mask(attention_mask), decoder_attention_mask)

    def decoder_inputs_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels shifted right behind decoder_start_token_id, with -100 replaced by the pad id (as transformers)."""
        start, pad = self.config.decoder_start_token_id, self.config.pad_token_id
        if start is None or pad is None:
            raise LmforgeError("the model config needs decoder_start_token_id and pad_token_id to train on labels")
        shifted = labels.new_full(labels.shape, start)
        shifted[:, 1:] = labels[:, :-1]
        return shifted.masked_fill(shifted == -100, pad)

    def loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
             label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy of the labels (B, T) given the source; labels equal to -100 do not count."""
        logits = self(input_ids, attention_mask, self.decoder_inputs_from_labels(labels))
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                               label_smoothing=label_smoothing)
