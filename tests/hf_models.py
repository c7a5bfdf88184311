"""Tiny random Hugging Face models built locally from configs (no download), shared by the parity, generation and
evaluation tests."""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.tokenizer import Tokenizer

VOCAB = 97


def tiny_hf_model(kind: str, seed: int = 0):
    """A seeded float32 transformers causal LM. Kinds: gpt2, opt, llama, llama-tied, mistral, qwen2."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if kind == "gpt2":
        cfg = tf.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, **common)
        cls = tf.GPT2LMHeadModel
    elif kind == "opt":
        cfg = tf.OPTConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, ffn_dim=48,
                           word_embed_proj_dim=32, max_position_embeddings=64, **common)
        cls = tf.OPTForCausalLM
    elif kind in ("llama", "llama-tied"):
        cfg = tf.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                             intermediate_size=56, max_position_embeddings=64, rope_theta=500.0,
                             tie_word_embeddings=kind == "llama-tied", **common)
        cls = tf.LlamaForCausalLM
    elif kind == "mistral":
        cfg = tf.MistralConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, hidden_size=32,
                               intermediate_size=40, max_position_embeddings=64, sliding_window=64, **common)
        cls = tf.MistralForCausalLM
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                             intermediate_size=48, max_position_embeddings=64, tie_word_embeddings=True, **common)
        cls = tf.Qwen2ForCausalLM
    else:
        raise ValueError(kind)
    torch.manual_seed(seed)
    model = cls(cfg).float().eval()
    # random init leaves biases and norms at 0/1: randomise them so the parity test sees them
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def save_tiny(kind: str, folder: Path, seed: int = 0):
    model = tiny_hf_model(kind, seed)
    model.save_pretrained(folder)
    return model


def left_padded_batch(seed: int = 0, batch: int = 3, length: int = 12, vocab: int = VOCAB):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        pad = min(length - 2, 3 * row)
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask


def hf_position_ids(mask: torch.Tensor) -> torch.Tensor:
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


SEQ2SEQ_KINDS = ("bart", "t5", "t5-v1_1")


def tiny_hf_seq2seq(kind: str, seed: int = 0, decoder_layers: int = 2):
    """A seeded float32 transformers seq2seq LM with 2 encoder layers. Kinds: bart, t5 (v1.0: ReLU, tied
    head rescaled by d_model**-0.5), t5-v1_1 (gated-GELU, untied head, no rescale). transformers' generate
    sizes its cache by the encoder depth, so only `decoder_layers=2` models can generate there."""
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "bart":
        cfg = tf.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=decoder_layers,
                            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                            decoder_ffn_dim=48, max_position_embeddings=64, scale_embedding=True, init_std=0.2,
                            bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)
        model = tf.BartForConditionalGeneration(cfg)
    elif kind in ("t5", "t5-v1_1"):
        v1_1 = kind == "t5-v1_1"
        cfg = tf.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=decoder_layers,
                          num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                          feed_forward_proj="gated-gelu" if v1_1 else "relu", tie_word_embeddings=not v1_1,
                          pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        model = tf.T5ForConditionalGeneration(cfg)
        if v1_1:  # transformers >= 5 ties every T5 head; a head that differs from the embeddings stays untied
            model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32))
    else:
        raise ValueError(kind)
    model = model.float().eval()
    # random init leaves biases and norms at 0/1: randomise them so the parity test sees them
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
        if kind == "bart":
            model.final_logits_bias.normal_(0, 0.1)
    return model


def save_tiny_seq2seq(kind: str, folder: Path, seed: int = 0, decoder_layers: int = 2):
    model = tiny_hf_seq2seq(kind, seed, decoder_layers)
    model.save_pretrained(folder)
    return model


def seq2seq_batch(seed: int = 0, batch: int = 3, source: int = 11, target: int = 7, start: int = 0,
                  vocab: int = VOCAB):
    """Right-padded encoder inputs and right-padded decoder inputs (starting with `start`) with their masks."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, source), generator=g)
    mask = torch.ones(batch, source, dtype=torch.long)
    dec = torch.randint(3, vocab, (batch, target), generator=g)
    dec[:, 0] = start
    dec_mask = torch.ones(batch, target, dtype=torch.long)
    for row in range(1, batch):
        mask[row, source - 3 * row:] = 0
        dec_mask[row, target - 2 * row:] = 0
    return ids, mask, dec, dec_mask


TEXT = ("The quick brown fox jumps over the lazy dog. Café crème, naïve façade, déjà vu — "
        "le cœur a ses raisons. 日本語のテキスト。 ") * 20


def save_tiny_with_tokenizer(folder: Path, seed: int = 0, n_positions: int = 64):
    """A random transformers GPT-2 over a 300-token byte-level BPE; EOS = BOS = <|endoftext|>."""
    import transformers as tf

    tok = Tokenizer.train_bpe([TEXT], vocab_size=300, min_frequency=1)
    eos = tok.eos_token_id
    cfg = tf.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=n_positions, vocab_size=tok.vocab_size,
                        bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(seed)
    model = tf.GPT2LMHeadModel(cfg).float().eval()
    with torch.no_grad():  # a sharper distribution than the near-uniform random init
        model.lm_head.weight.mul_(8)
    model.save_pretrained(folder)
    tok.save(folder)
    return model, tok
