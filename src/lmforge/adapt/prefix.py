"""Prefix tuning and prompt tuning: virtual tokens that every sequence starts with.

A model holds at most one `VirtualTokens` module, as `model.virtual_tokens` (models/decoder.py, encdec.py);
the model then starts every cache holding the virtual tokens' keys and values (`prefill`), and a forward
pass without a cache attends to them first (`cache`). So decoding sessions, every search strategy, beam
reorders, left padding and compiled steps see them without knowing about them: to a session they are cached
positions it did not write.

- **Prefix tuning** (Li & Liang): the virtual tokens' keys and values in every layer are parameters, one
  (kv_heads, head_dim) pair per layer and token, so a grouped-query model has a prefix per key/value head.
  With `prefix_projection` they are computed from token embeddings by a two-layer MLP during training, as
  PEFT does; the saved adapter holds its output. Decoder-only models, and the decoder self-attention of
  encoder-decoders (what PEFT's prefix tuning does there).
- **Prompt tuning** (Lester et al.): the virtual tokens' input embeddings are parameters; their keys and
  values come from running the model on them. Decoder-only models, and the encoder input of
  encoder-decoders (as PEFT does).

Virtual tokens take positions 0..P-1 and real tokens follow from P on, whatever the left padding, as in PEFT
with transformers' generate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.cache import GrowingCache

KeysValues = list[tuple[torch.Tensor, torch.Tensor]]


def _ones_before(mask: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """A (B, T) mask with n ones in front; other masks (None, a ready 4-D one) as they are."""
    if mask is None or mask.dim() != 2 or n == 0:
        return mask
    return F.pad(mask, (n, 0), value=1)


def repeat_to(ids: list[int], n: int) -> list[int]:
    """`ids` repeated (or cut) to n tokens, as PEFT's text initialisation does."""
    if not ids:
        raise LmforgeError("the initialisation text gives no tokens; give a longer text")
    return (ids * math.ceil(n / len(ids)))[:n]


def run_keys_values(model: nn.Module, ids: torch.Tensor | None = None, embeds: torch.Tensor | None = None) -> KeysValues:
    """The keys/values of every layer of a decoder-only model for tokens (1, n) or embeddings (1, n, dim)."""
    cache = GrowingCache([None] * model.config.n_layer)
    model.hidden_states(ids, cache=cache, inputs_embeds=embeds)
    return cache.keys_values


class VirtualTokens(nn.Module):
    """Positions every sequence starts with: `length` of them in the decoder (the cache starts with them), and
    `source_length` in front of an encoder-decoder's source."""

    length = 0
    source_length = 0

    def keys_values(self, model: nn.Module) -> KeysValues:
        """Each layer's keys and values of the virtual tokens, (1, kv_heads, length, head_dim); [] if none."""
        return []

    def prefill(self, model: nn.Module, cache) -> None:
        """Write the virtual tokens into an empty cache of the model (every row the same)."""
        keys_values = self.keys_values(model)
        for layer, (k, v) in enumerate(keys_values):
            cache.update(layer, k, v)
        if keys_values:
            cache.advance(self.length)

    def cache(self, model: nn.Module, batch: int, attention_mask: torch.Tensor | None):
        """(cache, mask) for a forward pass without a cache: a GrowingCache that starts with the virtual tokens
        (None if they are not in the decoder), and `attention_mask` with ones in front for them."""
        keys_values = self.keys_values(model)
        if not keys_values:
            return None, attention_mask
        return GrowingCache(keys_values), _ones_before(attention_mask, self.length)

    def encoder_input(self, x: torch.Tensor | None, attention_mask: torch.Tensor | None):
        """(embedded source, its mask) with the virtual source tokens in front (x may be None: the mask only)."""
        return x, attention_mask


class PrefixTuning(VirtualTokens):
    """Keys and values of `num_virtual_tokens` tokens in every (decoder) layer, stored as PEFT does: a table
    (tokens, layers * 2 * kv_heads * head_dim), each row [layer 0 keys, layer 0 values, layer 1 keys, ...]."""

    def __init__(self, model: nn.Module, num_virtual_tokens: int, projection: int | None = None):
        super().__init__()
        c = model.config
        self.length = num_virtual_tokens
        self.layers = c.n_decoder_layer if model.is_encoder_decoder else c.n_layer
        self.kv_heads = c.n_head if model.is_encoder_decoder else c.n_kv_head
        self.head_dim = c.head_dim
        self.token_dim = self.kv_heads * self.head_dim
        device, dtype = _device_dtype(model)
        width = self.layers * 2 * self.token_dim
        if projection:  # PEFT's PrefixEncoder with prefix_projection, while training
            self.embedding = nn.Parameter(torch.randn(num_virtual_tokens, self.token_dim, device=device, dtype=dtype))
            self.transform = nn.Sequential(nn.Linear(self.token_dim, projection, device=device, dtype=dtype), nn.Tanh(),
                                           nn.Linear(projection, width, device=device, dtype=dtype))
        else:
            self.table = nn.Parameter(torch.randn(num_virtual_tokens, width, device=device, dtype=dtype))

    @property
    def width(self) -> int:
        return self.layers * 2 * self.token_dim

    def values_table(self) -> torch.Tensor:
        """The (tokens, layers * 2 * kv_heads * head_dim) table: what the adapter folder holds."""
        return self.transform(self.embedding) if hasattr(self, "transform") else self.table

    def keys_values(self, model: nn.Module) -> KeysValues:
        table = self.values_table().view(self.length, self.layers, 2, self.kv_heads, self.head_dim)
        table = table.permute(1, 2, 3, 0, 4)[:, :, None]  # (layers, 2, 1, kv_heads, tokens, head_dim)
        return [(layer[0], layer[1]) for layer in table]

    def init_from_text(self, model: nn.Module, ids: list[int]) -> None:
        """Start from the keys and values the model computes for a text (repeated or cut to the length)."""
        if model.is_encoder_decoder or hasattr(self, "transform"):
            raise LmforgeError("prefix tuning starts from a text on decoder-only models without prefix_projection; "
                               "use init random")
        with torch.no_grad():
            keys_values = run_keys_values(model, torch.tensor([repeat_to(ids, self.length)], device=self.table.device))
            table = torch.stack([torch.stack(kv) for kv in keys_values])  # (layers, 2, 1, kv_heads, tokens, head_dim)
            self.table.copy_(table[:, :, 0].permute(3, 0, 1, 2, 4).reshape(self.length, -1))


class PromptTuning(VirtualTokens):
    """Input embeddings of `num_virtual_tokens` tokens (PEFT's `prompt_embeddings`): in front of the prompt of a
    decoder-only model, in front of the source of an encoder-decoder. PEFT's random initialisation, N(0, 1)."""

    def __init__(self, model: nn.Module, num_virtual_tokens: int):
        super().__init__()
        self.encoder_decoder = model.is_encoder_decoder
        if self.encoder_decoder:
            self.source_length = num_virtual_tokens
        else:
            self.length = num_virtual_tokens
        dim = model.config.d_model if self.encoder_decoder else model.config.n_embd
        device, dtype = _device_dtype(model)
        self.embeddings = nn.Parameter(torch.randn(num_virtual_tokens, dim, device=device, dtype=dtype))

    def keys_values(self, model: nn.Module) -> KeysValues:
        return [] if self.encoder_decoder else run_keys_values(model, embeds=self.embeddings[None])

    def encoder_input(self, x, attention_mask):
        if not self.encoder_decoder:
            return x, attention_mask
        if x is not None:
            x = torch.cat((self.embeddings[None].expand(x.shape[0], -1, -1).to(x.dtype), x), dim=1)
        return x, _ones_before(attention_mask, self.source_length)

    def init_from_tokens(self, model: nn.Module, ids: list[int]) -> None:
        """Start from the embeddings of tokens (a text repeated or cut to the length, PEFT's TEXT; or tokens drawn
        from the vocabulary, PEFT's SAMPLE_VOCAB), as the model's embedding layer gives them."""
        with torch.no_grad():
            ids = torch.tensor(repeat_to(ids, self.embeddings.shape[0]), device=self.embeddings.device)
            embed = model.embed if self.encoder_decoder else model.wte
            self.embeddings.copy_(embed(ids))


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype
