"""Best-of-n: sample n responses to each prompt and keep the one the reward model scores highest, the baseline
every RL method must beat (Stiennon et al. 2020; Nakano et al. 2021).

    from lmforge.align import best_of_n
    picks = best_of_n("runs/sft/best", "runs/reward/best", ["\\n\\nHuman: Hi!\\n\\nAssistant:"], n=8, seed=0,
                      max_new_tokens=64, top_p=0.9)
    picks[0].best.text, picks[0].best.reward

The reward model reads the decoded text with its own tokenizer, so it need not share the policy's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lmforge.align.reward_model import ScalarHead, load_reward_model, score_texts
from lmforge.errors import LmforgeError
from lmforge.generate.api import generate


@dataclass
class Candidate:
    text: str
    token_ids: list[int]
    reward: float


@dataclass
class BestOfN:
    prompt: str
    best: Candidate
    candidates: list[Candidate]  # in sampling order

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "best": vars(self.best), "candidates": [vars(c) for c in self.candidates]}


def best_of_n(policy, reward_model: ScalarHead | str | os.PathLike, prompts: str | list[str], n: int = 4, *,
              tokenizer=None, reward_tokenizer=None, seed: int | None = None, **generation) -> list[BestOfN]:
    """For each prompt, `n` sampled responses of `policy` (a model folder, a Checkpoint, or a model with
    `tokenizer`), each scored by `reward_model` (a folder or a loaded ScalarHead with `reward_tokenizer`); the
    highest wins. `generation` holds transformers' GenerationConfig parameters (do_sample defaults to true)."""
    if n < 1:
        raise LmforgeError(f"best-of-n needs n >= 1, not {n}")
    if isinstance(policy, (str, os.PathLike)):
        from lmforge.hub.hf import load_folder

        policy = load_folder(policy)
    if not isinstance(reward_model, ScalarHead):
        reward_model, reward_tokenizer = load_reward_model(reward_model)
    if reward_tokenizer is None:
        raise LmforgeError("the reward model has no tokenizer; pass reward_tokenizer= or save one in its folder")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    generation.setdefault("do_sample", True)
    result = generate(policy, prompts, tokenizer=tokenizer, num_return_sequences=n, seed=seed, **generation)
    picks = []
    for prompt, completions in zip(prompts, result.completions):
        texts = [c.text or "" for c in completions]
        rewards = score_texts(reward_model, reward_tokenizer, [prompt] * len(texts), texts)
        candidates = [Candidate(t, c.token_ids, r) for t, c, r in zip(texts, completions, rewards)]
        picks.append(BestOfN(prompt, max(candidates, key=lambda c: c.reward), candidates))
    return picks
