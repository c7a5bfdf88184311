"""The `adapter.*` section of the training configs (`lmforge train` and `lmforge finetune`).

    lmforge finetune --init_from facebook/bart-base --adapter.method lora --adapter.r 8 --adapter.alpha 16 ...
    adapter: {method: prefix, num_virtual_tokens: 20}        # in a YAML config
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from lmforge.adapt.peft_format import AdapterSettings

REGEX_CHARACTERS = re.compile(r"[\\^$.|?*+()\[\]{}]")


@dataclass
class AdapterConfig:
    """What to train instead of every weight: a LoRA, prefix or prompt adapter on the init_from model."""

    method: str = field(default="none", metadata={
        "help": "none (train every weight), lora, prefix (prefix tuning) or prompt (prompt tuning)"})
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: float = field(default=8.0, metadata={"help": "LoRA alpha: the update is scaled by alpha / r"})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout on the adapted layers' inputs"})
    targets: str | None = field(default=None, metadata={
        "help": "LoRA's modules, named as in transformers: a comma-separated list (q_proj,v_proj; c_attn for GPT-2; "
                "q,v for T5), all-linear, or a regular expression over full module names; null: PEFT's default for "
                "the family"})
    bias: str = field(default="none", metadata={"help": "LoRA: train no biases (none), all, or lora_only"})
    use_rslora: bool = field(default=False, metadata={"help": "LoRA: scale by alpha / sqrt(r) (rank-stabilised)"})
    init: str = field(default="default", metadata={
        "help": "LoRA: default (PEFT's: A Kaiming-uniform, B zero) or gaussian; prefix/prompt: default (random, as "
                "PEFT), text (from init_text) or, for prompt tuning, sample_vocab (embeddings of random tokens)"})
    init_text: str | None = field(default=None, metadata={"help": "the text prefix/prompt tuning starts from"})
    num_virtual_tokens: int = field(default=20, metadata={"help": "prefix/prompt tuning: virtual tokens"})
    prefix_projection: bool = field(default=False, metadata={
        "help": "prefix tuning: compute the prefix from token embeddings by a two-layer MLP while training (PEFT)"})
    encoder_hidden_size: int | None = field(default=None, metadata={
        "help": "prefix tuning: the MLP's hidden width; null: the key/value width"})

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def target_modules(self) -> list[str] | str | None:
        """`targets` as PEFT's target_modules: a list of names, or a string (all-linear, a regular expression)."""
        if self.targets is None or self.targets == "all-linear" or REGEX_CHARACTERS.search(self.targets):
            return self.targets
        return [name.strip() for name in self.targets.split(",") if name.strip()]

    def settings(self, base_name: str | None) -> AdapterSettings:
        lora = self.method == "lora"
        init = "random" if self.init == "default" else self.init
        return AdapterSettings(self.method, base_model_name_or_path=base_name, r=self.r, lora_alpha=self.alpha,
                               lora_dropout=self.dropout, target_modules=self.target_modules(), bias=self.bias,
                               use_rslora=self.use_rslora,
                               init_lora_weights=True if self.init == "default" else self.init,
                               num_virtual_tokens=self.num_virtual_tokens, prefix_projection=self.prefix_projection,
                               encoder_hidden_size=self.encoder_hidden_size,
                               prompt_tuning_init="random" if lora else init, prompt_tuning_init_text=self.init_text)

    def checks(self) -> list[tuple[bool, str]]:
        changed = [f.name for f in dataclasses.fields(self) if f.name != "method"
                   and getattr(self, f.name) != f.default]
        inits = {"lora": ("default", "gaussian"), "prefix": ("default", "text"),
                 "prompt": ("default", "text", "sample_vocab")}
        return [
            (self.method in ("none", "lora", "prefix", "prompt"), "adapter.method must be none, lora, prefix or prompt"),
            (self.enabled or not changed, f"adapter.{changed[0] if changed else ''} needs adapter.method "
                                          "(lora, prefix or prompt)"),
            (self.r >= 1, f"adapter.r (the LoRA rank) must be at least 1, not {self.r}"),
            (0 <= self.dropout < 1, "adapter.dropout must be in [0, 1)"),
            (self.bias in ("none", "all", "lora_only"), "adapter.bias must be none, all or lora_only"),
            (self.num_virtual_tokens >= 1, "adapter.num_virtual_tokens must be at least 1"),
            (not self.enabled or self.init in inits[self.method],
             f"adapter.init must be one of {', '.join(inits.get(self.method, ()))} for {self.method}"),
            (self.init != "text" or bool(self.init_text), "adapter.init text needs adapter.init_text"),
        ]
