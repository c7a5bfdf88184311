"""A tiny random model with a tokenizer for the server tests, whose greedy continuations vary (weights drawn
wider than the usual init, so the next-token distribution is sharp and changes along a text)."""

from __future__ import annotations

from pathlib import Path

import torch

import lmforge
from hf_models import TEXT
from lmforge.config import ModelConfig
from lmforge.models.decoder import DecoderLM
from lmforge.tokenizer import Tokenizer

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def save_serving_model(folder: Path, seed: int = 0, family: str = "gpt2", block_size: int = 128,
                       chat_template: str | None = None) -> Path:
    tok = Tokenizer.train_bpe([TEXT], vocab_size=320, special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                              min_frequency=1)
    torch.manual_seed(seed)
    cfg = ModelConfig(family=family, vocab_size=tok.vocab_size, n_layer=2, n_head=4, n_embd=64, block_size=block_size,
                      initializer_range=0.15, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                      **({"norm": "rmsnorm", "position": "rope", "gated_mlp": True, "activation": "silu",
                          "bias": False, "n_kv_head": 2} if family == "llama" else {}))
    model = DecoderLM(cfg).eval()
    lmforge.save(model, folder, tokenizer=tok)
    if chat_template is not None:
        (folder / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    return folder
