"""A reward model: a language model's body with a scalar head on the final hidden state of the last token.

    decoder-only      r(prompt + response) = score · h[last non-padding token]
    encoder-decoder   the prompt is the encoder's input, the response the decoder's (behind its start token);
                      r = score · (the decoder's final hidden state at the response's last token)

The folder it saves is what transformers' `AutoModelForSequenceClassification` loads with `num_labels=1` for
the families that have such a class (GPT-2, OPT, Llama, Mistral, Qwen2: the body's weights under the names
of the causal LM, `score.weight` beside them, no LM head); an encoder-decoder reward model keeps its family's
seq2seq names and `score.weight` (transformers' BART/T5 classifiers use another head, so only lmforge reads
it). Either way config.json says `"lmforge_reward": {"pooling": "last_token"}`.

Batches are right-padded: a row's real tokens never attend to the padding after them (causal attention), so
the body runs without a padding mask, exactly as on the unpadded row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_path
from lmforge.hub.families import FAMILIES
from lmforge.hub.hf import export_weights, import_weights, read_config, read_json, read_state_dict
from lmforge.hub.remote import resolve_model

MARKER = "lmforge_reward"
HEAD = "score.weight"
CLASSIFIERS = {"gpt2": "GPT2ForSequenceClassification", "opt": "OPTForSequenceClassification",
               "llama": "LlamaForSequenceClassification", "mistral": "MistralForSequenceClassification",
               "qwen2": "Qwen2ForSequenceClassification"}


def width_of(config) -> int:
    return config.d_model if hasattr(config, "d_model") else config.n_embd


def last_index(mask: torch.Tensor | None, length: int, rows: int, device) -> torch.Tensor:
    """The position of each row's last real token of a right-padded batch (the last position without a mask)."""
    if mask is None:
        return torch.full((rows,), length - 1, dtype=torch.long, device=device)
    return (mask.long().sum(-1) - 1).clamp(min=0)


class ScalarHead(nn.Module):
    """A body (DecoderLM or EncoderDecoderLM) with `score`, one linear unit over the last token's hidden state.
    The body's LM head is unused: it is tied to the embeddings, so it holds no parameters of its own."""

    def __init__(self, body: nn.Module, init_std: float | None = None):
        super().__init__()
        body.config.tie_word_embeddings = True
        body.tie_weights()
        self.body = body
        self.config = body.config
        p = next(body.parameters())
        self.score = nn.Linear(width_of(body.config), 1, bias=False, device=p.device, dtype=p.dtype)
        nn.init.normal_(self.score.weight, std=init_std or 1 / (width_of(body.config) + 1) ** 0.5)

    @property
    def is_encoder_decoder(self) -> bool:
        return self.body.is_encoder_decoder

    def hidden_all(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   decoder_input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The final hidden states (B, T, width) of every position (of the decoder, for encoder-decoder)."""
        body = self.body
        if not body.is_encoder_decoder:
            return body.hidden_states(input_ids)
        if decoder_input_ids is None:
            raise LmforgeError("an encoder-decoder reward model needs the response as decoder_input_ids")
        memory = body.encode(input_ids, attention_mask)
        return body.decoder_hidden_states(decoder_input_ids, memory, body.encoder_mask(attention_mask))

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               decoder_input_ids: torch.Tensor | None = None,
               decoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The final hidden state (B, width) of each row's last real token (of the decoder, for encoder-decoder)."""
        h = self.hidden_all(input_ids, attention_mask, decoder_input_ids)
        mask = decoder_attention_mask if self.body.is_encoder_decoder else attention_mask
        index = last_index(mask, h.shape[1], h.shape[0], h.device)
        return h[torch.arange(h.shape[0], device=h.device), index]

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               decoder_input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The scalar (B, T) at every position: a value model's estimate of each state."""
        return self.score(self.hidden_all(input_ids, attention_mask, decoder_input_ids)).squeeze(-1).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The scalar (B,) of each right-padded row."""
        h = self.hidden(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)
        return self.score(h).squeeze(-1).float()

    def save_checkpoint(self, folder: Path, tokenizer=None, generation_config: dict | None = None) -> None:
        """Write the reward model into `folder` (an existing, empty folder); the training loop calls this."""
        write_reward_files(self, folder, tokenizer)


# ---- folders --------------------------------------------------------------------------------------------


def write_reward_files(model: ScalarHead, folder: Path, tokenizer=None) -> None:
    body, c = model.body, model.config
    family = FAMILIES[c.family]
    hf = family.config_to_hf(c)
    state = {k: v for k, v in export_weights(body, family.weight_map(c)).items() if k != "lm_head.weight"}
    state[HEAD] = model.score.weight.detach()
    if c.family in CLASSIFIERS:
        hf["architectures"] = [CLASSIFIERS[c.family]]
    hf.update(bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
              id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0}, problem_type="regression",
              dtype="float32", torch_dtype="float32", **{MARKER: {"pooling": "last_token"}})
    hf = {k: v for k, v in hf.items() if v is not None}
    (folder / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    save_file({k: v.float().contiguous() for k, v in state.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(folder)


def save_reward_model(model: ScalarHead, folder: str | os.PathLike, tokenizer=None) -> Path:
    """Write `model` (and its tokenizer) as a reward-model folder, atomically."""
    folder = Path(folder)
    with atomic_path(folder, is_dir=True) as tmp:
        write_reward_files(model, tmp, tokenizer)
    return folder


def is_reward_folder(folder: str | os.PathLike) -> bool:
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    hf = read_json(path)
    return MARKER in hf or any(str(a).endswith("ForSequenceClassification") for a in hf.get("architectures") or [])


def load_reward_model(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """(the ScalarHead, its tokenizer or None) of a reward-model folder: lmforge's, or a transformers
    `...ForSequenceClassification` folder with one label of a supported decoder-only family."""
    from lmforge.tokenizer import Tokenizer

    folder = resolve_model(folder)
    hf = read_config(folder)
    if not is_reward_folder(folder):
        raise LmforgeError(f"{folder} is a language model, not a reward model (its config.json has no "
                           "ForSequenceClassification architecture); train one with lmforge reward")
    labels = len(hf.get("id2label") or {"0": 0}) if "num_labels" not in hf else hf["num_labels"]
    if labels != 1:
        raise LmforgeError(f"{folder} is a classifier with {labels} labels; a reward model has one")
    family = FAMILIES[hf["model_type"]]
    config = family.config_from_hf(hf)
    config.tie_word_embeddings = True  # a reward model has no LM head of its own
    state = {k: v for k, v in read_state_dict(folder).items() if k not in family.unused and k != "lm_head.weight"}
    if HEAD not in state:
        raise LmforgeError(f"{folder} has no {HEAD} (the reward head); it is not a reward model")
    head = state.pop(HEAD)
    if head.shape[0] != 1:
        raise LmforgeError(f"{folder}: {HEAD} has {head.shape[0]} outputs; a reward model has one")
    with torch.device("meta"):
        body = family.model_class(config)
    ours = import_weights(state, family.weight_map(config), body, family.optional_prefix, str(folder))
    body.load_state_dict({k: v.float() for k, v in ours.items()}, strict=False, assign=True)
    for module in body.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
    body.tie_weights()
    model = ScalarHead(body.to(device))
    with torch.no_grad():
        model.score.weight.copy_(head.float())
    tokenizer = None
    if any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        tokenizer = Tokenizer.from_pretrained(folder)
    return model.eval(), tokenizer


def reward_rows(tokenizer, model: ScalarHead, prompts: list[str], responses: list[str]
                ) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) as a reward model reads them: the layout of its training (data/preferences.py's
    PreferenceEncoder, without EOS), fitted to its context as there (a response keeps at most half of a decoder-only
    context, then the prompt loses its start)."""
    from lmforge.data.preferences import PreferenceEncoder, PreferencePair

    c = model.config
    if model.is_encoder_decoder:
        limit = c.max_position_embeddings if getattr(c, "position", None) == "learned" else 1 << 30
        max_length, max_response = limit, limit - 1
    else:
        max_length, max_response = c.block_size, c.block_size // 2
    encoder = PreferenceEncoder(tokenizer, model.is_encoder_decoder, c.family, max_length, max_response,
                                "truncate", add_eos=False)
    pairs, _ = encoder.encode([PreferencePair(p, r, r, id=str(i)) for i, (p, r) in enumerate(zip(prompts, responses))])
    return [(pair.prompt, pair.chosen) for pair in pairs]


@torch.no_grad()
def score_rows(model: ScalarHead, rows: list[tuple[list[int], list[int]]], batch_size: int = 16) -> list[float]:
    """The rewards of (prompt ids, response ids) rows, in batches of right-padded rows."""
    from lmforge.data.preferences import right_pad

    device = next(model.parameters()).device
    c = model.config
    pad = c.pad_token_id if c.pad_token_id is not None else c.eos_token_id or 0
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        if model.is_encoder_decoder:
            ids, mask = right_pad([p for p, _ in chunk], pad)
            dec, dec_mask = right_pad([[c.decoder_start_token_id] + r for _, r in chunk], pad)
            values = model(ids.to(device), mask.to(device), dec.to(device), dec_mask.to(device))
        else:
            ids, mask = right_pad([p + r for p, r in chunk], pad)
            if ids.shape[1] > c.block_size:
                raise LmforgeError(f"a text to score is {ids.shape[1]} tokens, longer than the reward model's "
                                   f"context ({c.block_size})")
            values = model(ids.to(device), mask.to(device))
        out.extend(values.tolist())
    return out


def score_texts(model: ScalarHead, tokenizer, prompts: list[str], responses: list[str],
                batch_size: int = 16) -> list[float]:
    """The reward of each (prompt, response); for a decoder-only model the two texts are joined as in training."""
    was_training = model.training
    model.eval()
    try:
        rows = reward_rows(tokenizer, model, prompts, responses)
        return score_rows(model, rows, batch_size)
    finally:
        model.train(was_training)
