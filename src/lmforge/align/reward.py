"""Training a reward model on preference pairs (`lmforge reward`): the task, and its configuration.

    data      preference pairs (data/preferences.py), `batch_size` pairs per step in a seeded order
    model     a ScalarHead (align/reward_model.py) on a language model folder (init_from: an SFT model, or a
              reward model to continue), or on a model from scratch (model.preset, BPE tokenizer)
    loss      Bradley-Terry: -log sigmoid(r_chosen - r_rejected - margin), weighted per pair (a ranking's K(K-1)/2
              pairs share one example's weight), plus center_rewards_coefficient * mean((r_chosen + r_rejected)^2)
              to keep the rewards centred on zero (Eisenstein et al. 2023; TRL's name)
    evaluate  on the validation pairs: val_loss, val_accuracy (the share of pairs whose chosen response scores
              higher; a tie counts half), val_margin (mean r_chosen - r_rejected), reward_mean
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.align.common import (
    PairOrder,
    PreferenceDataConfig,
    check_context,
    collate_pairs,
    data_checks,
    encode_split,
    encoder_for,
    load_language_model,
    load_splits,
    scratch_model,
    split_rows,
)
from lmforge.align.reward_model import ScalarHead, is_reward_folder, load_reward_model
from lmforge.errors import LmforgeError
from lmforge.train.config import LoopConfig
from lmforge.train.loop import Run, RunResult, set_dropout, train_task
from lmforge.train.pairs import PairModelConfig


@dataclass
class RewardConfig(LoopConfig):
    out_dir: str = field(default="runs/reward", metadata={"help": "the run folder"})
    init_from: str = field(default="scratch", metadata={
        "help": "the model whose body the reward model starts from: an SFT/base model folder or Hub name, a reward "
                "model folder, or scratch (model.preset with a BPE tokenizer trained on the pairs)"})
    max_iters: int | None = 1000
    learning_rate: float = 2e-5
    min_lr: float = 2e-6
    warmup_iters: int = 20
    weight_decay: float = 0.0
    eval_interval: int = 100
    best_metric: str = field(default="val_accuracy", metadata={
        "help": "what picks the best checkpoint: val_accuracy, val_loss or val_margin"})
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    model: PairModelConfig = field(default_factory=lambda: PairModelConfig(preset="tiny-gpt2", dropout=0.0))
    batch_size: int = field(default=8, metadata={"help": "preference pairs per micro-step per process"})
    max_length: int = field(default=512, metadata={
        "help": "tokens of prompt + response (decoder-only), of the prompt (encoder-decoder)"})
    max_response_length: int = field(default=256, metadata={"help": "tokens of a response; longer ones lose their end"})
    too_long: str = field(default="truncate", metadata={
        "help": "a longer pair: truncate (the prompt's start, then the response's end), drop, or error; counted"})
    center_rewards_coefficient: float = field(default=0.0, metadata={
        "help": "weight of mean((r_chosen + r_rejected)^2) in the loss (keeps rewards near 0); 0: off"})
    eval_pairs: int = field(default=0, metadata={"help": "validation pairs per evaluation; 0: all"})

    RESUMABLE: ClassVar[frozenset[str]] = LoopConfig.RESUMABLE | {"eval_pairs"}

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + data_checks(self) + [
            (self.center_rewards_coefficient >= 0, "center_rewards_coefficient must not be negative"),
            (self.best_metric in ("val_accuracy", "val_loss", "val_margin"),
             "best_metric must be val_accuracy, val_loss or val_margin"),
            (0 <= self.model.dropout < 1, "model.dropout must be in [0, 1)"),
        ]


def train_reward(config: RewardConfig | dict | str | os.PathLike, *, resume: bool = False, quiet: bool = False,
                 callback: Callable[[dict], None] | None = None) -> RunResult:
    """Train a reward model as `config` says (a RewardConfig, a mapping of dotted keys, a YAML file, or a run
    folder); the best checkpoint is a reward-model folder (see align/reward_model.py)."""
    return train_task(RewardTraining(RewardConfig.from_any(config)), resume=resume, quiet=quiet, callback=callback)


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                  weight: torch.Tensor | None = None, center: float = 0.0) -> torch.Tensor:
    """The weighted mean of -log sigmoid(r_chosen - r_rejected - margin), plus center * mean((r_c + r_r)^2)."""
    diff = chosen - rejected - (margin if margin is not None else 0.0)
    losses = -F.logsigmoid(diff)
    loss = losses.mean() if weight is None else (losses * weight).sum() / weight.sum()
    if center:
        loss = loss + center * ((chosen + rejected) ** 2).mean()
    return loss


def reward_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
            if k in batch}


class RewardTraining:
    def __init__(self, config: RewardConfig):
        self.config = config

    def setup(self, run: Run, resume_from: Path | None) -> None:
        cfg = self.config
        self.run = run
        train, val = load_splits(cfg, run)
        self.model, self.tokenizer = self.build(train, resume_from)
        self.generation = {}
        check_context(self.model.body, cfg, run.init_from)
        self.model.to(run.device)
        encoder = encoder_for(cfg, self.model, self.tokenizer, add_eos=False)
        self.pad_id = encoder.pad_id
        self.train_pairs = encode_split(encoder, train, run, cfg)
        val_pairs = encode_split(encoder, val, run, cfg)
        self.val_pairs = val_pairs[:cfg.eval_pairs] if cfg.eval_pairs else val_pairs
        self.order = PairOrder(len(self.train_pairs), cfg.batch_size, cfg.seed)

    def build(self, train, resume_from: Path | None) -> tuple[ScalarHead, object]:
        cfg, run = self.config, self.run
        source = resume_from or (None if cfg.init_from == "scratch" else cfg.init_from)
        if source is None:
            body, tokenizer = scratch_model(cfg, train)
            run.say(f"reward model from scratch: {cfg.model.preset}, {body.num_parameters() / 1e6:.2f}M parameters")
            set_dropout(body, cfg.model.dropout)
            torch.manual_seed(cfg.seed)
            return ScalarHead(body), tokenizer
        if is_reward_folder(source):
            model, tokenizer = load_reward_model(source)
            if tokenizer is None:
                raise LmforgeError(f"{source} has no tokenizer (tokenizer.json); add the model's tokenizer")
        else:
            body, tokenizer, _ = load_language_model(source)
            torch.manual_seed(cfg.seed)
            model = ScalarHead(body)
        if resume_from is None:
            run.say(f"reward model on {source}: {model.config.family}, {model.body.num_parameters() / 1e6:.2f}M "
                    "parameters")
        set_dropout(model.body, cfg.model.dropout)
        return model.train(), tokenizer

    # ---- what the loop calls -------------------------------------------------------------------

    def describe(self) -> str:
        cfg = self.config
        return f"{cfg.batch_size * cfg.gradient_accumulation_steps * self.run.dist.world_size} preference pairs per step"

    def next_batch(self) -> dict:
        index = split_rows(self.order.next(), self.run.dist)
        return collate_pairs([self.train_pairs[i] for i in index], self.model, self.pad_id, self.run.device,
                             with_labels=False)

    def loss(self, module: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
        rewards = module(**reward_inputs(batch))
        chosen, rejected = rewards.chunk(2)
        loss = bradley_terry(chosen, rejected, batch["margin"], batch["weight"], self.config.center_rewards_coefficient)
        return loss, loss.detach(), batch["tokens"]

    def evaluate(self, step: int, final: bool) -> dict:
        run = self.run
        mine = list(range(run.dist.rank, len(self.val_pairs), run.dist.world_size))
        sums = torch.zeros(5, dtype=torch.float64, device=run.device)  # loss, correct, margin, reward, weight
        for start in range(0, len(mine), self.config.batch_size):
            pairs = [self.val_pairs[i] for i in mine[start:start + self.config.batch_size]]
            batch = collate_pairs(pairs, self.model, self.pad_id, run.device, with_labels=False)
            chosen, rejected = self.model(**reward_inputs(batch)).double().chunk(2)
            diff = chosen - rejected
            w = batch["weight"].double()
            sums += torch.stack([(-F.logsigmoid(diff - batch["margin"].double()) * w).sum(),
                                 (((diff > 0).double() + 0.5 * (diff == 0).double()) * w).sum(), (diff * w).sum(),
                                 ((chosen + rejected) / 2 * w).sum(), w.sum()])
        if run.dist.enabled:
            torch.distributed.all_reduce(sums)
        loss, correct, margin, reward, weight = (sums / sums[4]).tolist()
        return {"val_loss": loss, "val_accuracy": correct, "val_margin": margin, "reward_mean": reward}

    def state_dict(self) -> dict:
        return {"order": self.order.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state["order"])


@torch.no_grad()
def evaluate_reward_model(model: ScalarHead, tokenizer, spec: str, max_length: int, max_response_length: int,
                          batch_size: int = 16) -> dict:
    """Pairwise accuracy (a tie counts half), mean margin and Bradley-Terry loss of a reward model on the pairs
    of a preference spec, with the length limits of its training (longer pairs truncated)."""
    from lmforge.data.preferences import PreferenceEncoder, load_preferences

    prefs = load_preferences(spec)
    encoder = PreferenceEncoder(tokenizer, model.is_encoder_decoder, model.config.family, max_length,
                                max_response_length, "truncate", add_eos=False)
    pairs, report = encoder.encode(prefs.pairs, prefs.description)
    device = next(model.parameters()).device
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    for start in range(0, len(pairs), batch_size):
        batch = collate_pairs(pairs[start:start + batch_size], model, encoder.pad_id, device, with_labels=False)
        chosen, rejected = model(**reward_inputs(batch)).double().cpu().chunk(2)
        diff = chosen - rejected
        sums += torch.stack([((diff > 0).double() + 0.5 * (diff == 0).double()).sum(), diff.sum(),
                             -F.logsigmoid(diff).sum(), torch.tensor(float(len(diff)), dtype=torch.float64)])
    correct, margin, loss, n = sums.tolist()
    return {"pairs": int(n), "accuracy": correct / n, "margin": margin / n, "loss": loss / n,
            "truncated_prompts": report.truncated_prompts, "truncated_responses": report.truncated_responses,
            "description": prefs.description}
