"""Direct preference optimization (`lmforge dpo`): the task, its losses and its configuration.

    data       preference pairs (data/preferences.py), each response ended by EOS
    policy     the init_from model (an SFT model), trained whole or through an adapter (adapter.method lora, ...)
    reference  frozen: `copy` (a second copy of init_from in memory), `base` (the policy with its adapter disabled:
               no second copy), or `precomputed` (the reference's log-probabilities of every pair computed once at
               the start, then no reference model at all); `auto` is base for an adapter, else copy. The three give
               the same loss.
    loss       with the log-ratios c = log pi(y_c|x) - log ref(y_c|x) and r = log pi(y_r|x) - log ref(y_r|x):
                 sigmoid  -log sigmoid(beta (c - r))                       (DPO, Rafailov et al. 2023)
                 hinge    max(0, 1 - beta (c - r))                          (SLiC)
                 ipo      (c / |y_c| - r / |y_r| - 1 / (2 beta))^2         (IPO, Azar et al. 2023; per-token, as TRL)
               weighted per pair (a ranking's pairs share one example's weight)
    evaluate   on the validation pairs: val_loss, val_accuracy (how often the implicit reward beta * c exceeds
               beta * r), chosen_reward, rejected_reward, margin (their mean difference)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.adapt.adapters import disable_adapter
from lmforge.adapt.config import AdapterConfig
from lmforge.align.common import (
    PairOrder,
    PreferenceDataConfig,
    check_context,
    collate_pairs,
    data_checks,
    encode_split,
    encoder_for,
    load_language_model,
    load_policy,
    load_splits,
    split_rows,
)
from lmforge.data.preferences import EncodedPair
from lmforge.errors import LmforgeError
from lmforge.losses import IGNORE, token_logprobs
from lmforge.train.config import LoopConfig, adapter_checks
from lmforge.train.loop import Run, RunResult, train_task

LOSSES = ("sigmoid", "hinge", "ipo")
REFERENCES = ("auto", "copy", "base", "precomputed")


@dataclass
class DPOConfig(LoopConfig):
    out_dir: str = field(default="runs/dpo", metadata={"help": "the run folder"})
    init_from: str = field(default="scratch", metadata={
        "help": "the policy to align (an SFT model folder or Hub name); it is also the reference"})
    max_iters: int | None = 1000
    learning_rate: float = 5e-6
    min_lr: float = 5e-7
    warmup_iters: int = 20
    weight_decay: float = 0.0
    eval_interval: int = 100
    best_metric: str = field(default="val_loss", metadata={
        "help": "what picks the best checkpoint: val_loss, val_accuracy or margin"})
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    loss_type: str = field(default="sigmoid", metadata={"help": "sigmoid (DPO), hinge or ipo"})
    beta: float = field(default=0.1, metadata={"help": "the strength of the KL constraint to the reference"})
    reference: str = field(default="auto", metadata={
        "help": "copy (a frozen copy of init_from), base (the policy with its adapter disabled), precomputed (the "
                "reference's log-probabilities computed once at the start); auto: base with an adapter, else copy"})
    dropout: float = field(default=0.0, metadata={"help": "of the policy while it trains"})
    batch_size: int = field(default=8, metadata={"help": "preference pairs per micro-step per process"})
    max_length: int = field(default=512, metadata={
        "help": "tokens of prompt + response (decoder-only), of the prompt (encoder-decoder)"})
    max_response_length: int = field(default=256, metadata={"help": "tokens of a response (with EOS)"})
    too_long: str = field(default="truncate", metadata={
        "help": "a longer pair: truncate (the prompt's start, then the response's end), drop, or error; counted"})
    eval_pairs: int = field(default=0, metadata={"help": "validation pairs per evaluation; 0: all"})

    RESUMABLE: ClassVar[frozenset[str]] = LoopConfig.RESUMABLE | {"eval_pairs"}

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + data_checks(self) + adapter_checks(self) + [
            (self.init_from != "scratch", "DPO aligns a trained policy: set init_from to an SFT model folder"),
            (self.loss_type in LOSSES, f"loss_type must be one of {', '.join(LOSSES)}"),
            (self.beta > 0, "beta must be positive"),
            (self.reference in REFERENCES, f"reference must be one of {', '.join(REFERENCES)}"),
            (self.reference != "base" or self.adapter.enabled,
             "reference base is the policy with its adapter disabled: set adapter.method (lora, ...) or use copy"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.best_metric in ("val_loss", "val_accuracy", "margin"),
             "best_metric must be val_loss, val_accuracy or margin"),
        ]

    def reference_kind(self) -> str:
        if self.reference != "auto":
            return self.reference
        return "base" if self.adapter.enabled else "copy"


def train_dpo(config: DPOConfig | dict | str | os.PathLike, *, resume: bool = False, quiet: bool = False,
              callback: Callable[[dict], None] | None = None) -> RunResult:
    """Align a policy with DPO as `config` says (a DPOConfig, a mapping of dotted keys, a YAML file, or a run
    folder)."""
    return train_task(DPOTraining(DPOConfig.from_any(config)), resume=resume, quiet=quiet, callback=callback)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, loss_type: str = "sigmoid",
             chosen_tokens: torch.Tensor | None = None, rejected_tokens: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards) from sequence log-probabilities (B,) each; the rewards
    are the implicit ones, beta * log-ratio, detached. `ipo` needs the responses' token counts."""
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * (chosen_ratio - rejected_ratio))
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss needs the token counts of the responses")
        delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise LmforgeError(f"unknown DPO loss {loss_type!r}; choose one of {', '.join(LOSSES)}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def sequence_logps(module: nn.Module, batch: dict, is_encoder_decoder: bool) -> torch.Tensor:
    """log p(response | prompt) of every row (2B,) of a collated preference batch (right padding: the decoder-only
    rows run without a mask, as their real tokens never attend to the padding after them)."""
    if is_encoder_decoder:
        logits = module(batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"])
    else:
        logits = module(batch["input_ids"])
    return token_logprobs(logits, batch["labels"]).sum(-1)


class DPOTraining:
    def __init__(self, config: DPOConfig):
        self.config = config

    def setup(self, run: Run, resume_from: Path | None) -> None:
        cfg = self.config
        self.run = run
        self.kind = cfg.reference_kind()
        train, val = load_splits(cfg, run)
        self.model, self.tokenizer, generation = self.policy(resume_from)
        self.generation = generation
        check_context(self.model, cfg, cfg.init_from)
        self.model.to(run.device)
        self.reference = None
        if self.kind in ("copy", "precomputed"):
            self.reference, _, _ = load_language_model(cfg.init_from)
            self.reference.to(run.device).eval().requires_grad_(False)
        encoder = encoder_for(cfg, self.model, self.tokenizer, add_eos=True)
        self.pad_id = encoder.pad_id
        self.train_pairs = encode_split(encoder, train, run, cfg)
        val_pairs = encode_split(encoder, val, run, cfg)
        self.val_pairs = val_pairs[:cfg.eval_pairs] if cfg.eval_pairs else val_pairs
        self.train_ref = self.val_ref = None
        if self.kind == "precomputed":
            self.train_ref, self.val_ref = self.precompute(self.train_pairs), self.precompute(self.val_pairs)
            self.reference = None  # no reference model from here on
            run.say(f"reference log-probabilities precomputed for {len(self.train_pairs) + len(self.val_pairs)} pairs")
        self.order = PairOrder(len(self.train_pairs), cfg.batch_size, cfg.seed)
        run.say(f"DPO ({cfg.loss_type}, beta {cfg.beta:g}) against the reference: {describe_reference(self.kind)}")

    def policy(self, resume_from: Path | None) -> tuple[nn.Module, object, dict]:
        return load_policy(self.config, self.run, resume_from)

    @contextlib.contextmanager
    def reference_model(self):
        """The frozen reference, in evaluation mode: the copy, or the policy with its adapter disabled."""
        if self.kind == "base":
            was_training = self.model.training
            self.model.eval()
            try:
                with disable_adapter(self.model):
                    yield self.model
            finally:
                self.model.train(was_training)
        else:
            yield self.reference

    def collate(self, pairs: list[EncodedPair], refs: torch.Tensor | None) -> dict:
        batch = collate_pairs(pairs, self.model, self.pad_id, self.run.device, with_labels=True)
        batch["response_tokens"] = (batch["labels"] != IGNORE).sum(-1)
        if refs is not None:
            batch["ref_logps"] = refs.to(self.run.device)
        return batch

    @torch.no_grad()
    def reference_logps(self, batch: dict) -> torch.Tensor:
        if "ref_logps" in batch:
            return batch["ref_logps"]
        with self.reference_model() as reference, self.run.autocast:
            return sequence_logps(reference, batch, self.model.is_encoder_decoder)

    def precompute(self, pairs: list[EncodedPair]) -> torch.Tensor:
        """The reference's log-probabilities (2, N): row 0 of the chosen responses, row 1 of the rejected ones."""
        out = []
        size = self.config.batch_size
        for start in range(0, len(pairs), size):
            chunk = pairs[start:start + size]
            out.append(self.reference_logps(self.collate(chunk, None)).view(2, len(chunk)).cpu())
        return torch.cat(out, dim=1)

    def pair_losses(self, module: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        policy_c, policy_r = sequence_logps(module, batch, self.model.is_encoder_decoder).chunk(2)
        ref_c, ref_r = self.reference_logps(batch).float().chunk(2)
        tokens_c, tokens_r = batch["response_tokens"].chunk(2)
        return dpo_loss(policy_c, policy_r, ref_c, ref_r, self.config.beta, self.config.loss_type, tokens_c, tokens_r)

    # ---- what the loop calls -------------------------------------------------------------------

    def describe(self) -> str:
        cfg = self.config
        return f"{cfg.batch_size * cfg.gradient_accumulation_steps * self.run.dist.world_size} preference pairs per step"

    def next_batch(self) -> dict:
        index = split_rows(self.order.next(), self.run.dist)
        refs = self.train_ref[:, index].reshape(-1) if self.train_ref is not None else None
        return self.collate([self.train_pairs[i] for i in index], refs)

    def loss(self, module: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
        losses, _, _ = self.pair_losses(module, batch)
        weight = batch["weight"]
        loss = (losses * weight).sum() / weight.sum()
        return loss, loss.detach(), batch["tokens"]

    def evaluate(self, step: int, final: bool) -> dict:
        run = self.run
        mine = list(range(run.dist.rank, len(self.val_pairs), run.dist.world_size))
        sums = torch.zeros(6, dtype=torch.float64, device=run.device)  # loss, correct, chosen, rejected, margin, w
        for start in range(0, len(mine), self.config.batch_size):
            index = mine[start:start + self.config.batch_size]
            refs = self.val_ref[:, index].reshape(-1) if self.val_ref is not None else None
            batch = self.collate([self.val_pairs[i] for i in index], refs)
            losses, chosen, rejected = (t.double() for t in self.pair_losses(self.model, batch))
            w = batch["weight"].double()
            sums += torch.stack([(losses * w).sum(), ((chosen > rejected).double() * w).sum(), (chosen * w).sum(),
                                 (rejected * w).sum(), ((chosen - rejected) * w).sum(), w.sum()])
        if run.dist.enabled:
            torch.distributed.all_reduce(sums)
        loss, correct, chosen, rejected, margin, _ = (sums / sums[5]).tolist()
        return {"val_loss": loss, "val_accuracy": correct, "chosen_reward": chosen, "rejected_reward": rejected,
                "margin": margin}

    def state_dict(self) -> dict:
        return {"order": self.order.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state["order"])


def describe_reference(kind: str) -> str:
    return {"copy": "a frozen copy of init_from", "base": "the policy with its adapter disabled (no second copy)",
            "precomputed": "log-probabilities computed once from init_from"}[kind]
