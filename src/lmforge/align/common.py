"""What the preference tasks share: the data section of their configs, the starting model and tokenizer, and
batches of preference pairs in a seeded order that a resumed run continues."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from lmforge.data.preferences import (
    EncodedPair,
    PreferenceEncoder,
    PreferenceSet,
    load_preferences,
    right_pad,
)
from lmforge.errors import LmforgeError
from lmforge.hub.hf import load_folder, load_tokenizer
from lmforge.tokenizer import Tokenizer
from lmforge.train.pairs import SPECIAL_TOKENS, FinetuneConfig, PairDataConfig, build_model


@dataclass
class PreferenceDataConfig:
    train: str = field(default="hh-rlhf-helpful-base:train", metadata={
        "help": "training pairs: a named set (hh-rlhf-helpful-base, hh-rlhf-helpful-online, "
                "hh-rlhf-helpful-rejection-sampled, optionally :split) or a .jsonl file with prompt/chosen/rejected "
                "(or HH-RLHF transcripts, or prompt + ranked responses); several joined with +"})
    val: str = field(default="", metadata={"help": "validation pairs, as train; empty: hold out val_fraction of train"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of train held out when val is empty"})
    tokenizer: str = field(default="bpe", metadata={
        "help": "from scratch: bpe (trained on the training pairs) or a tokenizer folder; a model folder given as "
                "init_from brings its own"})
    vocab_size: int = field(default=8192, metadata={"help": "vocabulary of a trained BPE tokenizer"})


def data_checks(cfg) -> list[tuple[bool, str]]:
    return [
        (0 < cfg.data.val_fraction < 1, "data.val_fraction must be between 0 and 1 (exclusive)"),
        (cfg.too_long in ("truncate", "drop", "error"), "too_long must be truncate, drop or error"),
        (cfg.max_response_length >= 2, "max_response_length must be at least 2"),
        (cfg.batch_size >= 1 and cfg.eval_pairs >= 0, "batch_size must be at least 1 and eval_pairs not negative"),
        (cfg.distributed != "fsdp", "the preference tasks train with one process or distributed ddp, not fsdp"),
    ]


def load_splits(cfg, run) -> tuple[PreferenceSet, PreferenceSet]:
    """The training and validation pairs (validation held out of train, seeded, when data.val is empty)."""
    d = cfg.data
    train = load_preferences(d.train)
    for text in train.notes:
        run.note(text)
    if d.val:
        val = load_preferences(d.val)
        for text in val.notes:
            run.note(text)
    else:
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        n_val = max(1, round(d.val_fraction * len(order)))
        if n_val >= len(order):
            raise LmforgeError(f"{train.description} has {len(train)} pair(s), too few to hold out a validation "
                               "share; give data.val")
        held = set(order[:n_val])
        val = PreferenceSet(f"{train.description} (held out)", [p for i, p in enumerate(train.pairs) if i in held])
        train = PreferenceSet(train.description, [p for i, p in enumerate(train.pairs) if i not in held])
    run.say(f"data: {len(train)} training pairs ({train.description}), {len(val)} validation pairs "
            f"({val.description})")
    return train, val


def scratch_model(cfg, train: PreferenceSet) -> tuple[nn.Module, Tokenizer]:
    """A fresh language model of `cfg.model.preset` with a tokenizer (BPE trained on the training pairs)."""
    d = cfg.data
    if d.tokenizer == "bpe":
        texts = [t for p in train.pairs for t in (p.prompt, p.chosen, p.rejected)]
        tokenizer = Tokenizer.train_bpe(texts, vocab_size=d.vocab_size, special_tokens=SPECIAL_TOKENS)
    else:
        tokenizer = load_tokenizer(d.tokenizer)
    torch.manual_seed(cfg.seed)
    shim = FinetuneConfig(model=replace(cfg.model), data=PairDataConfig(
        max_source_length=cfg.max_length, max_target_length=cfg.max_response_length))
    return build_model(shim, tokenizer), tokenizer


def load_language_model(source: str) -> tuple[nn.Module, Tokenizer, dict]:
    checkpoint = load_folder(source)
    if checkpoint.tokenizer is None:
        raise LmforgeError(f"{source} has no tokenizer (tokenizer.json); add the model's tokenizer to the folder")
    return checkpoint.model, checkpoint.tokenizer, dict(checkpoint.generation_config)


def load_policy(cfg, run, resume_from) -> tuple[nn.Module, Tokenizer, dict]:
    """The policy a DPO or PPO run trains, in training mode: init_from with the config's adapter (its weights from
    `resume_from` when resuming), or the whole model from `resume_from` (else init_from)."""
    from lmforge.adapt.training import prepare_training
    from lmforge.train.loop import set_dropout

    if cfg.adapter.enabled:
        model, tokenizer, generation = load_language_model(cfg.init_from)
        set_dropout(model, cfg.dropout)
        run.say(prepare_training(model, cfg.adapter, cfg.init_from, tokenizer, cfg.seed, resume_from))
    else:
        model, tokenizer, generation = load_language_model(str(resume_from or cfg.init_from))
        set_dropout(model, cfg.dropout)
    return model.train(), tokenizer, generation


def check_context(model: nn.Module, cfg, source: str) -> None:
    c = model.config
    if model.is_encoder_decoder:
        limit = c.max_position_embeddings if c.position == "learned" else None
        if limit is not None and max(cfg.max_length, cfg.max_response_length + 1) > limit:
            raise LmforgeError(f"max_length ({cfg.max_length}) or max_response_length ({cfg.max_response_length}) "
                               f"does not fit the positions of {source} ({limit}); lower them")
    elif cfg.max_length > c.block_size:
        raise LmforgeError(f"max_length ({cfg.max_length}) is longer than the context of {source} "
                           f"({c.block_size}); lower it")


def encoder_for(cfg, model: nn.Module, tokenizer, add_eos: bool) -> PreferenceEncoder:
    return PreferenceEncoder(tokenizer, model.is_encoder_decoder, model.config.family, cfg.max_length,
                             cfg.max_response_length, cfg.too_long, add_eos)


def encode_split(encoder: PreferenceEncoder, prefs: PreferenceSet, run, cfg) -> list[EncodedPair]:
    pairs, report = encoder.encode(prefs.pairs, prefs.description)
    for text in report.notes(prefs.description, cfg.max_length, cfg.max_response_length):
        run.note(text)
    return pairs


class PairOrder:
    """Indices of the training pairs, `batch_size` at a time, in a new seeded order every epoch."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.rng = random.Random(seed)
        self.epoch, self.position, self.order = 0, 0, []
        self.epoch_rng = self.rng.getstate()

    def next(self) -> list[int]:
        if self.position >= len(self.order):
            self.epoch += 1
            self.epoch_rng = self.rng.getstate()
            self.order = list(range(self.n))
            self.rng.shuffle(self.order)
            self.position = 0
        index = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return index

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "rng": self.epoch_rng, "started": bool(self.order)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self.rng.setstate(state["rng"])
        self.epoch_rng = state["rng"]
        self.order = []
        if state["started"]:
            self.order = list(range(self.n))
            self.rng.shuffle(self.order)


def split_rows(index: list[int], dist) -> list[int]:
    """This process's share of a batch (each process gets at least one row)."""
    if not dist.enabled:
        return index
    return index[dist.rank::dist.world_size] or [index[dist.rank % len(index)]]


def collate_pairs(pairs: list[EncodedPair], model: nn.Module, pad_id: int, device, with_labels: bool) -> dict:
    """One right-padded batch of 2B rows: the chosen responses of the B pairs, then the rejected ones.

    Decoder-only: input_ids = prompt + response (minus the last token when `with_labels`), labels = the next
    tokens, -100 on the prompt and the padding; `attention_mask` marks real tokens. Encoder-decoder:
    input_ids/attention_mask = the prompts, labels = the responses (-100 on padding), decoder_input_ids = the
    labels behind the start token (with_labels) or the start token + the whole response (for a reward model,
    whose last real position then holds the last response token).
    Also: margin (B,), weight (B,), tokens (the real tokens of the batch)."""
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    prompts = [p.prompt for p in pairs] * 2
    batch: dict = {"margin": torch.tensor([p.margin for p in pairs], device=device),
                   "weight": torch.tensor([p.weight for p in pairs], device=device),
                   "tokens": sum(len(p) + len(r) for p, r in zip(prompts, responses))}
    if model.is_encoder_decoder:
        ids, mask = right_pad(prompts, pad_id)
        start = model.config.decoder_start_token_id
        if with_labels:
            labels, _ = right_pad(responses, -100)
            batch["labels"] = labels.to(device)
            batch["decoder_input_ids"] = model.decoder_inputs_from_labels(labels).to(device)
        else:
            dec, dec_mask = right_pad([[start] + r for r in responses], pad_id)
            batch["decoder_input_ids"], batch["decoder_attention_mask"] = dec.to(device), dec_mask.to(device)
        batch["input_ids"], batch["attention_mask"] = ids.to(device), mask.to(device)
        return batch
    rows = [p + r for p, r in zip(prompts, responses)]
    if with_labels:
        targets = [[-100] * (len(p) - 1) + r for p, r in zip(prompts, responses)]
        ids, mask = right_pad([row[:-1] for row in rows], pad_id)
        labels, _ = right_pad(targets, -100)
        batch["labels"] = labels.to(device)
    else:
        ids, mask = right_pad(rows, pad_id)
    batch["input_ids"], batch["attention_mask"] = ids.to(device), mask.to(device)
    return batch
