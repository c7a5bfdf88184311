"""PPO against a reward model (`lmforge ppo`), the InstructGPT objective: the task and its configuration.

One *update* is: sample responses to `rollout_batch_size` prompts with the policy (lmforge's generation engine:
batched sampling over the KV cache), score each (prompt, response) with the reward model, then train
`ppo_epochs` passes over that batch in `num_minibatches` minibatches. One loop step is one minibatch, so an
update is ppo_epochs * num_minibatches steps, and `max_iters` counts steps.

    rewards     per response token t: -kl_coef * KL_t, plus the reward model's score at the last token, where KL_t
                estimates KL(policy || reference) from the sampled token: k1 = log pi - log ref, or
                k3 = (ref/pi - 1) - log(ref/pi) (non-negative, lower variance; Schulman 2020)
    kl_coef     fixed, or adaptive (Ziegler et al. 2019): after each update
                kl_coef *= 1 + clip(KL / target_kl - 1, -0.2, 0.2) * rollout_batch_size / kl_horizon
    advantages  GAE(gamma, lam) over the response tokens with the value model's estimates; whitened per batch
    losses      clipped policy loss max(-A r, -A clip(r, 1 - eps, 1 + eps)), r = pi / pi_old; clipped value loss
                0.5 max((V - R)^2, (V_clip - R)^2), weighted by vf_coef; optionally + ptx_coef * the language
                modelling loss on a text corpus (PPO-ptx)
    models      policy (init_from; trained whole or through an adapter), reference (a frozen copy of init_from, or
                the policy with its adapter disabled), value model (a ScalarHead over every position, started
                from the reward model as in InstructGPT, or from init_from), reward model (frozen)

metrics.jsonl (every evaluation, one per update by default; the first before any update): reward_mean, kl (the
mean per-response sum of k1), kl_coef, entropy, clipfrac, approx_kl, value_loss, policy_loss, response_length,
rollout_tokens_per_sec; val_loss is minus the objective, -(reward_mean - kl_coef * kl). samples.txt holds rollouts
every sample_interval updates.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from lmforge.adapt.adapters import disable_adapter
from lmforge.adapt.config import AdapterConfig
from lmforge.adapt.training import save_weights
from lmforge.align.common import load_language_model
from lmforge.align.common import load_policy as load_trainable_policy
from lmforge.align.reward_model import (
    ScalarHead,
    is_reward_folder,
    load_reward_model,
    score_texts,
    write_reward_files,
)
from lmforge.data.preferences import load_prompts, right_pad
from lmforge.errors import LmforgeError
from lmforge.generate.api import generate
from lmforge.train.config import LoopConfig, adapter_checks
from lmforge.train.loop import Run, RunResult, set_dropout, train_task

VALUE = "value"  # the value model's folder inside a checkpoint
RewardFn = Callable[[list[str], list[str]], list[float]]


@dataclass
class PPOConfig(LoopConfig):
    out_dir: str = field(default="runs/ppo", metadata={"help": "the run folder"})
    init_from: str = field(default="scratch", metadata={"help": "the SFT policy to align (a model folder or Hub name)"})
    reward_model: str = field(default="", metadata={"help": "the reward model folder (made by lmforge reward)"})
    value_model: str = field(default="", metadata={
        "help": "the value model's start: a reward model folder or a language model folder; empty: the reward model "
                "(InstructGPT), or init_from when the reward is a Python function"})
    prompts: str = field(default="", metadata={
        "help": "training prompts: a .txt file (one per line), a .jsonl with a prompt field, or preference data "
                "(its prompts; e.g. hh-rlhf-helpful-base:test); several joined with +"})
    max_iters: int | None = field(default=400, metadata={"help": "optimizer steps (minibatches)"})
    learning_rate: float = 1e-5
    min_lr: float = 1e-6
    warmup_iters: int = 0
    weight_decay: float = 0.0
    eval_interval: int = field(default=4, metadata={
        "help": "evaluate (write metrics.jsonl) every this many steps: a multiple of ppo_epochs * num_minibatches"})
    log_interval: int = 4
    best_metric: str = field(default="val_loss", metadata={
        "help": "what picks the best checkpoint: val_loss (minus the objective) or reward_mean"})
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    rollout_batch_size: int = field(default=16, metadata={"help": "prompts sampled per update"})
    ppo_epochs: int = field(default=2, metadata={"help": "passes over each rollout batch"})
    num_minibatches: int = field(default=2, metadata={"help": "minibatches per pass (one optimizer step each)"})
    max_prompt_length: int = field(default=256, metadata={"help": "tokens of a prompt; longer ones lose their start"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens of a response at most"})
    temperature: float = 1.0
    top_k: int = field(default=0, metadata={"help": "of the rollouts' sampling (0: all tokens)"})
    top_p: float = 1.0
    kl_coef: float = field(default=0.05, metadata={"help": "the KL penalty's coefficient (its start when adaptive)"})
    kl_estimator: str = field(default="k1", metadata={"help": "k1 (log pi - log ref) or k3"})
    adaptive_kl: bool = field(default=False, metadata={"help": "adapt kl_coef towards target_kl"})
    target_kl: float = field(default=6.0, metadata={"help": "the per-response KL an adaptive coefficient aims at"})
    kl_horizon: int = field(default=10000, metadata={"help": "the adaptive controller's horizon (in responses)"})
    gamma: float = 1.0
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    cliprange: float = field(default=0.2, metadata={"help": "of the policy ratio"})
    cliprange_value: float = field(default=0.2, metadata={"help": "of the value estimates"})
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss"})
    whiten_advantages: bool = True
    ptx_coef: float = field(default=0.0, metadata={"help": "weight of the pretraining loss (PPO-ptx); 0: off"})
    ptx_data: str = field(default="", metadata={"help": "PPO-ptx: a UTF-8 text file"})
    ptx_batch_size: int = field(default=4, metadata={"help": "PPO-ptx: windows per step"})
    ptx_block_size: int = field(default=128, metadata={"help": "PPO-ptx: tokens per window"})
    dropout: float = field(default=0.0, metadata={"help": "of policy and value model while they train"})
    sample_interval: int = field(default=1, metadata={"help": "write rollouts to samples.txt every N updates; 0: never"})
    samples_shown: int = field(default=3, metadata={"help": "rollouts written each time"})

    RESUMABLE: ClassVar[frozenset[str]] = LoopConfig.RESUMABLE | {"sample_interval", "samples_shown"}

    @property
    def steps_per_update(self) -> int:
        return self.ppo_epochs * self.num_minibatches

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + adapter_checks(self) + [
            (self.init_from != "scratch", "PPO aligns a trained policy: set init_from to an SFT model folder"),
            (bool(self.prompts), "set prompts to a file of training prompts (.txt, .jsonl) or a preference data set"),
            (self.rollout_batch_size >= self.num_minibatches >= 1 and self.ppo_epochs >= 1,
             "rollout_batch_size must be at least num_minibatches, and both and ppo_epochs at least 1"),
            (self.eval_interval % self.steps_per_update == 0,
             f"eval_interval must be a multiple of ppo_epochs * num_minibatches ({self.steps_per_update}), "
             "the steps of one update"),
            (self.kl_estimator in ("k1", "k3"), "kl_estimator must be k1 or k3"),
            (self.kl_coef >= 0 and self.target_kl > 0 and self.kl_horizon >= 1,
             "kl_coef must not be negative, target_kl and kl_horizon must be positive"),
            (0 < self.gamma <= 1 and 0 <= self.lam <= 1, "gamma must be in (0, 1] and lam in [0, 1]"),
            (self.cliprange > 0 and self.cliprange_value > 0 and self.vf_coef >= 0,
             "cliprange and cliprange_value must be positive, vf_coef not negative"),
            (self.ptx_coef == 0 or bool(self.ptx_data), "ptx_coef needs ptx_data (a text file)"),
            (self.temperature > 0 and 0 < self.top_p <= 1 and self.top_k >= 0,
             "temperature must be positive, top_p in (0, 1], top_k not negative"),
            (self.max_new_tokens >= 1 and self.max_prompt_length >= 1, "max_new_tokens and max_prompt_length >= 1"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.best_metric in ("val_loss", "reward_mean"), "best_metric must be val_loss or reward_mean"),
            (self.distributed != "fsdp", "PPO trains in one process"),
        ]


def train_ppo(config: PPOConfig | dict | str | os.PathLike, *, reward_fn: RewardFn | None = None,
              resume: bool = False, quiet: bool = False, callback: Callable[[dict], None] | None = None) -> RunResult:
    """Align a policy with PPO as `config` says. The reward is the reward model's score (config reward_model), or
    `reward_fn(prompts, responses) -> rewards` (texts) when given."""
    return train_task(PPOTraining(PPOConfig.from_any(config), reward_fn), resume=resume, quiet=quiet,
                      callback=callback)


class PolicyAndValue(nn.Module):
    """What PPO trains: the policy and the value model, saved as the policy's folder with the value model's
    folder (`value/`) inside."""

    def __init__(self, policy: nn.Module, value: ScalarHead):
        super().__init__()
        self.policy, self.value = policy, value
        self.config = policy.config

    def save_checkpoint(self, folder: Path, tokenizer=None, generation_config: dict | None = None) -> None:
        save_weights(self.policy, folder, tokenizer=tokenizer, generation_config=generation_config)
        (folder / VALUE).mkdir()
        write_reward_files(self.value, folder / VALUE)


# ---- the pieces of the algorithm --------------------------------------------------------------------


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """The per-token estimate of KL(policy || reference) from the sampled tokens' log-probabilities."""
    if estimator == "k1":
        return logp - ref_logp
    log_ratio = ref_logp - logp
    return log_ratio.exp() - 1 - log_ratio


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) (B, R) of left-aligned response tokens (`mask` 1 on real ones): generalised advantage
    estimation, the value after a row's last token being 0."""
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        following = values[:, t + 1] * mask[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * following - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, advantages + values


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def ppo_losses(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
               old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange: float,
               cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(clipped policy loss, clipped value loss, statistics) over the masked response tokens."""
    ratio = (logp - old_logp).exp()
    policy_loss = masked_mean(torch.max(-advantages * ratio,
                                        -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)), mask)
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    value_loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean(((ratio - 1).abs() > cliprange).float(), mask).item(),
                 "approx_kl": 0.5 * masked_mean((logp - old_logp) ** 2, mask).item()}
    return policy_loss, value_loss, stats


# ---- the task ---------------------------------------------------------------------------------------


class PPOTraining:
    def __init__(self, config: PPOConfig, reward_fn: RewardFn | None = None):
        self.config, self.reward_fn = config, reward_fn

    def setup(self, run: Run, resume_from: Path | None) -> None:
        cfg = self.config
        self.run = run
        if run.dist.enabled:
            raise LmforgeError("PPO trains in one process; run it without torchrun")
        if self.reward_fn is None and not cfg.reward_model:
            raise LmforgeError("PPO needs a reward: set reward_model to a folder made by lmforge reward "
                               "(or pass reward_fn in Python)")
        self.prompts = load_prompts(cfg.prompts)
        policy, self.tokenizer, generation = self.load_policy(resume_from)
        self.encoder_decoder = policy.is_encoder_decoder
        self.generation = generation
        self.reward_model = self.reward_tokenizer = None
        if self.reward_fn is None:
            self.reward_model, self.reward_tokenizer = self.load_reward()
        value = self.load_value(resume_from)
        self.model = PolicyAndValue(policy, value).to(run.device)
        self.reference = None
        if not cfg.adapter.enabled:
            self.reference, _, _ = load_language_model(cfg.init_from)
            self.reference.to(run.device).eval().requires_grad_(False)
        self.ptx = self.load_ptx() if cfg.ptx_coef else None
        self.rng = random.Random(cfg.seed)
        self.order: list[int] = []
        self.kl_coef = cfg.kl_coef
        self.updates, self.buffer, self.minibatches = 0, None, []
        self.window: list[dict] = []
        run.say(f"PPO: {len(self.prompts)} prompts, {cfg.rollout_batch_size} rollouts per update, "
                f"{cfg.ppo_epochs} epoch(s) x {cfg.num_minibatches} minibatch(es); reward: "
                f"{'a Python function' if self.reward_fn else cfg.reward_model}; reference: "
                f"{'the policy with its adapter disabled' if cfg.adapter.enabled else 'a frozen copy of init_from'}")

    def load_policy(self, resume_from: Path | None):
        return load_trainable_policy(self.config, self.run, resume_from)

    def load_reward(self):
        cfg = self.config
        model, tokenizer = load_reward_model(cfg.reward_model, self.run.device)
        if tokenizer is None:
            raise LmforgeError(f"{cfg.reward_model} has no tokenizer (tokenizer.json); add the one it was trained with")
        if tokenizer.backend.get_vocab() != self.tokenizer.backend.get_vocab():
            raise LmforgeError(f"the reward model {cfg.reward_model} uses another tokenizer than the policy "
                               f"{cfg.init_from}; train the reward model from the policy's model or tokenizer")
        return model.requires_grad_(False), tokenizer

    def load_value(self, resume_from: Path | None) -> ScalarHead:
        cfg = self.config
        source = str(resume_from / VALUE) if resume_from else cfg.value_model or cfg.reward_model or cfg.init_from
        if is_reward_folder(source):
            value, _ = load_reward_model(source)
        else:
            body, _, _ = load_language_model(source)
            torch.manual_seed(cfg.seed)
            value = ScalarHead(body)
        set_dropout(value.body, cfg.dropout)
        if value.is_encoder_decoder != self.encoder_decoder:
            raise LmforgeError(f"the value model ({source}) and the policy must both be decoder-only or both "
                               "encoder-decoder; set value_model")
        return value.train()

    def load_ptx(self) -> torch.Tensor:
        path = Path(self.config.ptx_data)
        if not path.is_file():
            raise LmforgeError(f"ptx_data {path} does not exist; give a UTF-8 text file")
        ids = torch.tensor(self.tokenizer.encode(path.read_text(encoding="utf-8")), dtype=torch.long)
        if len(ids) <= self.config.ptx_block_size + 1:
            raise LmforgeError(f"ptx_data {path} holds {len(ids)} tokens, fewer than ptx_block_size + 2")
        return ids

    # ---- rollouts -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def reference_model(self):
        policy = self.model.policy
        if self.reference is not None:
            yield self.reference
            return
        was_training = policy.training
        policy.eval()
        try:
            with disable_adapter(policy):
                yield policy
        finally:
            policy.train(was_training)

    def next_prompts(self) -> list[int]:
        picked = []
        while len(picked) < self.config.rollout_batch_size:
            if not self.order:
                self.order = list(range(len(self.prompts)))
                self.rng.shuffle(self.order)
            picked.append(self.order.pop())
        return picked

    def prompt_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of prompts as the policy reads them ([BOS] prompt, or [BOS (BART)] prompt EOS for an
        encoder-decoder), their start cut to max_prompt_length."""
        tok, encdec = self.tokenizer, self.encoder_decoder
        bos = [tok.bos_token_id] if tok.bos_token_id is not None and (
            not encdec or self.model.config.family == "bart") else []
        eos = [tok.eos_token_id] if encdec and tok.eos_token_id is not None else []
        room = self.config.max_prompt_length - len(bos) - len(eos)
        return [bos + ids[max(len(ids) - room, 0):] + eos for ids in tok.encode_batch(texts)]

    def layout(self, prompts: list[list[int]], responses: list[list[int]]) -> dict:
        """The teacher-forced inputs of (prompt, response) rows and where each response token is predicted:
        `positions` (B, R) index the output positions, `tokens` (B, R) the response tokens, `mask` (B, R)."""
        device, config = self.run.device, self.model.config
        pad = config.pad_token_id if config.pad_token_id is not None else (config.eos_token_id or 0)
        width = max(len(r) for r in responses)
        tokens, mask = right_pad(responses, pad)
        if self.encoder_decoder:
            src, src_mask = right_pad(prompts, pad)
            dec, _ = right_pad([[config.decoder_start_token_id] + r[:-1] for r in responses], pad)
            inputs = {"input_ids": src.to(device), "attention_mask": src_mask.to(device),
                      "decoder_input_ids": dec.to(device)}
            starts = torch.zeros(len(prompts), dtype=torch.long)
        else:
            ids, _ = right_pad([p + r[:-1] for p, r in zip(prompts, responses)], pad)
            inputs = {"input_ids": ids.to(device)}
            starts = torch.tensor([len(p) - 1 for p in prompts])
        limit = inputs.get("decoder_input_ids", inputs["input_ids"]).shape[1] - 1
        positions = (starts[:, None] + torch.arange(width)[None]).clamp(max=limit)
        return {**inputs, "positions": positions.to(device), "tokens": tokens.to(device),
                "mask": mask.to(device).float()}

    @staticmethod
    def forward_policy(model: nn.Module, batch: dict) -> torch.Tensor:
        if "decoder_input_ids" in batch:
            return model(batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"])
        return model(batch["input_ids"])

    @staticmethod
    def at_responses(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probabilities (B, R) of the response tokens, the entropy (B, R) of each of their distributions)."""
        index = batch["positions"][..., None].expand(-1, -1, logits.shape[-1])
        logp = logits.gather(1, index).float().log_softmax(-1)
        token_logp = logp.gather(-1, batch["tokens"][..., None]).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return token_logp, entropy

    def values_of(self, value: ScalarHead, batch: dict) -> torch.Tensor:
        all_values = value.values(batch["input_ids"], batch.get("attention_mask"), batch.get("decoder_input_ids"))
        return all_values.gather(1, batch["positions"])

    def rewards_of(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        if self.reward_fn is not None:
            scores = [float(x) for x in self.reward_fn(prompts, responses)]
            if len(scores) != len(prompts):
                raise LmforgeError(f"reward_fn returned {len(scores)} rewards for {len(prompts)} responses")
        else:
            scores = score_texts(self.reward_model, self.reward_tokenizer, prompts, responses)
        return torch.tensor(scores, dtype=torch.float32, device=self.run.device)

    @torch.no_grad()
    def rollout(self) -> None:
        """Sample a batch of responses, score them, and fill the buffer with its minibatches for ppo_epochs."""
        cfg, run, policy = self.config, self.run, self.model.policy
        picked = self.next_prompts()
        texts = [self.prompts[i] for i in picked]
        prompts = self.prompt_ids(texts)
        began = time.perf_counter()
        policy.eval()
        with run.autocast:
            out = generate(policy, prompts, do_sample=True, temperature=cfg.temperature, top_k=cfg.top_k,
                           top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 7919 * self.updates)
        responses = [c[0].token_ids or [self.tokenizer.eos_token_id] for c in out.completions]
        generated = sum(len(r) for r in responses)
        rollout_s = time.perf_counter() - began
        eos = self.tokenizer.eos_token_id
        response_texts = [self.tokenizer.decode([t for t in r if t != eos], skip_special_tokens=True)
                          for r in responses]
        scores = self.rewards_of(texts, response_texts)
        batch = self.layout(prompts, responses)
        mask = batch["mask"]
        with run.autocast:
            old_logp, _ = self.at_responses(self.forward_policy(policy, batch), batch)
            with self.reference_model() as reference:
                ref_logp, _ = self.at_responses(self.forward_policy(reference, batch), batch)
            self.model.value.eval()
            old_values = self.values_of(self.model.value, batch) * mask
            self.model.value.train()
        policy.train()
        kl = kl_penalty(old_logp, ref_logp, cfg.kl_estimator) * mask
        rewards = -self.kl_coef * kl
        last = (mask.sum(-1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(responses)), last] += scores
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask)
        sequence_kl = ((old_logp - ref_logp) * mask).sum(-1)
        self.buffer = {**batch, "old_logp": old_logp * mask, "old_values": old_values, "advantages": advantages,
                       "returns": returns}
        order = [i for _ in range(cfg.ppo_epochs) for i in self.epoch_order(len(responses))]
        size = math.ceil(len(responses) / cfg.num_minibatches)
        per_epoch = [order[e * len(responses):(e + 1) * len(responses)] for e in range(cfg.ppo_epochs)]
        self.minibatches = [rows[k:k + size] for rows in per_epoch for k in range(0, len(rows), size)]
        self.update_stats = {"reward_mean": scores.mean().item(), "kl": sequence_kl.mean().item(),
                             "kl_coef": self.kl_coef, "response_length": mask.sum(-1).mean().item(),
                             "rollout_tokens_per_sec": generated / max(rollout_s, 1e-9)}
        if cfg.adaptive_kl:
            error = max(min(self.update_stats["kl"] / cfg.target_kl - 1, 0.2), -0.2)
            self.kl_coef *= 1 + error * len(responses) / cfg.kl_horizon
        self.updates += 1
        if cfg.sample_interval and self.updates % cfg.sample_interval == 0 and run.main:
            shown = "\n".join(f"[reward {scores[i].item():+.3f}] {texts[i]!r} -> {response_texts[i]!r}"
                              for i in range(min(cfg.samples_shown, len(texts))))
            run.files.add_sample(self.updates, f"update {self.updates}:\n{shown}")

    def epoch_order(self, n: int) -> list[int]:
        rows = list(range(n))
        self.rng.shuffle(rows)
        return rows

    # ---- what the loop calls --------------------------------------------------------------------

    def describe(self) -> str:
        cfg = self.config
        return (f"{cfg.rollout_batch_size} rollouts per update in {cfg.num_minibatches} minibatch(es), "
                f"{cfg.steps_per_update} steps per update")

    def next_batch(self) -> dict:
        if not self.minibatches:
            self.rollout()
        rows = torch.tensor(self.minibatches.pop(0), device=self.run.device)
        batch = {k: v.index_select(0, rows) for k, v in self.buffer.items()}
        if self.ptx is not None:
            cfg = self.config
            g = torch.Generator().manual_seed(cfg.seed + self.run_steps())
            starts = torch.randint(0, len(self.ptx) - cfg.ptx_block_size - 1, (cfg.ptx_batch_size,), generator=g)
            windows = torch.stack([self.ptx[s:s + cfg.ptx_block_size + 1] for s in starts.tolist()])
            batch["ptx"] = windows.to(self.run.device)
        return batch

    def run_steps(self) -> int:
        cfg = self.config
        return self.updates * cfg.steps_per_update - len(self.minibatches)

    def loss(self, module: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
        cfg = self.config
        mask = batch["mask"]
        logp, entropy = self.at_responses(self.forward_policy(module.policy, batch), batch)
        values = self.values_of(module.value, batch)
        policy_loss, value_loss, stats = ppo_losses(logp, batch["old_logp"], batch["advantages"], values,
                                                    batch["old_values"], batch["returns"], mask, cfg.cliprange,
                                                    cfg.cliprange_value)
        loss = policy_loss + cfg.vf_coef * value_loss
        tokens = int(mask.sum().item())
        if "ptx" in batch:
            from lmforge.losses import cross_entropy

            windows = batch["ptx"]
            ptx_loss, _ = cross_entropy(module.policy(windows[:, :-1]), windows[:, 1:])
            loss = loss + cfg.ptx_coef * ptx_loss
            stats["ptx_loss"] = ptx_loss.item()
            tokens += windows.numel()
        stats.update(policy_loss=policy_loss.item(), value_loss=value_loss.item(),
                     entropy=masked_mean(entropy, mask).item())
        self.window.append(stats)
        return loss, loss.detach(), tokens

    def evaluate(self, step: int, final: bool) -> dict:
        """The statistics of the rollouts of the policy as it is now (sampled here, and trained on in the next update)
        and of the steps since the last evaluation."""
        if not self.minibatches:  # the rollouts of the next update show the policy as it is now
            self.rollout()
        record = dict(self.update_stats)
        for key in self.window[0] if self.window else ():
            record[key] = sum(s[key] for s in self.window) / len(self.window)
        record["val_loss"] = -(record["reward_mean"] - record["kl_coef"] * record["kl"])
        record["update"] = self.updates
        self.window = []
        return record

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "order": list(self.order), "kl_coef": self.kl_coef,
                "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.order, self.kl_coef, self.updates = list(state["order"]), state["kl_coef"], state["updates"]
