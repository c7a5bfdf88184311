"""Per-family translation between Hugging Face checkpoints and lmforge models: config fields and weight names.

Each family provides `config_from_hf(hf: dict) -> config`, `config_to_hf(config) -> dict`,
`weight_map(config) -> list[WeightMap]` and its model class (hub/family.py). The decoder-only families
are here; `FAMILIES` holds them and the encoder-decoder ones of seq2seq_families.py.
"""

from __future__ import annotations

from lmforge.config import ModelConfig
from lmforge.hub.family import Family, WeightMap, refuse
from lmforge.hub.seq2seq_families import SEQ2SEQ_FAMILIES
from lmforge.models.decoder import DecoderLM


def _ids(hf: dict) -> dict:
    return {k: hf.get(k) if not isinstance(hf.get(k), list) else hf[k][0]
            for k in ("bos_token_id", "eos_token_id", "pad_token_id")}

def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        refuse(hf["model_type"], "rope_type", kind, "only plain RoPE is implemented")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))

# --- GPT-2 ---------------------------------------------------------------------------------------

_GPT2_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}

def gpt2_config_from_hf(hf: dict) -> ModelConfig:
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            refuse("gpt2", flag, True, "the standard GPT-2 attention is implemented")
    if hf.get("scale_attn_weights") is False:
        refuse("gpt2", "scale_attn_weights", False, "attention is always scaled by 1/sqrt(head_dim)")
    act = hf.get("activation_function", "gelu_new")
    if act not in _GPT2_ACT:
        refuse("gpt2", "activation_function", act, f"use one of {sorted(_GPT2_ACT)}")
    return ModelConfig.for_family(
        "gpt2", vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
        intermediate_size=hf.get("n_inner"), block_size=hf["n_positions"],
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), activation=_GPT2_ACT[act],
        tie_word_embeddings=hf.get("tie_word_embeddings", True), bias=hf.get("lmforge", {}).get("bias", True),
        initializer_range=hf.get("initializer_range", 0.02), **_ids(hf))

def gpt2_config_to_hf(c: ModelConfig) -> dict:
    hf = dict(architectures=["GPT2LMHeadModel"], model_type="gpt2", vocab_size=c.vocab_size, n_layer=c.n_layer,
              n_head=c.n_head, n_embd=c.n_embd, n_inner=c.intermediate_size, n_positions=c.block_size,
              n_ctx=c.block_size, layer_norm_epsilon=c.norm_eps,
              activation_function={v: k for k, v in _GPT2_ACT.items()}[c.activation],
              tie_word_embeddings=c.tie_word_embeddings, initializer_range=c.initializer_range,
              resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout)
    if not c.bias:
        hf["lmforge"] = {"bias": False}  # stored with zero biases, which transformers' GPT-2 needs
    return hf

def gpt2_weight_map(c: ModelConfig) -> list[WeightMap]:
    m = [WeightMap("wte.weight", ("transformer.wte.weight",)), WeightMap("wpe.weight", ("transformer.wpe.weight",))]
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        pairs = [("ln1", "ln_1", False), ("attn.qkv", "attn.c_attn", True), ("attn.proj", "attn.c_proj", True),
                 ("ln2", "ln_2", False), ("mlp.fc", "mlp.c_fc", True), ("mlp.proj", "mlp.c_proj", True)]
        for a, b, conv in pairs:
            m.append(WeightMap(ours + a + ".weight", (theirs + b + ".weight",), transpose=conv))
            m.append(WeightMap(ours + a + ".bias", (theirs + b + ".bias",)))
    m += [WeightMap("ln_f.weight", ("transformer.ln_f.weight",)), WeightMap("ln_f.bias", ("transformer.ln_f.bias",))]
    return m

# --- GPT-1 (openai-gpt) ---------------------------------------------------------------------------

# transformers' OpenAIGPT maps afn "gelu" to gelu_new, the tanh approximation (as the original GPT-1 code did)
_GPT1_ACT = {"gelu": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}

def gpt1_config_from_hf(hf: dict) -> ModelConfig:
    act = hf.get("afn", "gelu")
    if act not in _GPT1_ACT:
        refuse("openai-gpt", "afn", act, f"use one of {sorted(_GPT1_ACT)}")
    return ModelConfig.for_family(
        "openai-gpt", vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
        block_size=hf["n_positions"], norm_eps=hf.get("layer_norm_epsilon", 1e-5), activation=_GPT1_ACT[act],
        tie_word_embeddings=hf.get("tie_word_embeddings", True), initializer_range=hf.get("initializer_range", 0.02),
        **_ids(hf))

def gpt1_config_to_hf(c: ModelConfig) -> dict:
    if c.intermediate_size != 4 * c.n_embd or not c.bias or not c.post_norm or c.norm != "layernorm":
        refuse("openai-gpt", "shape", (c.intermediate_size, c.bias, c.post_norm, c.norm),
               "GPT-1 has post-norm LayerNorm blocks with biases and an MLP of 4 × n_embd")
    return dict(architectures=["OpenAIGPTLMHeadModel"], model_type="openai-gpt", vocab_size=c.vocab_size,
                n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_positions=c.block_size,
                layer_norm_epsilon=c.norm_eps, afn=_gpt1_afn(c.activation),
                tie_word_embeddings=c.tie_word_embeddings, initializer_range=c.initializer_range,
                resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout)

def _gpt1_afn(activation: str) -> str:
    names = {"gelu_tanh": "gelu", "relu": "relu", "silu": "silu"}
    if activation not in names:
        refuse("openai-gpt", "activation", activation, "GPT-1 checkpoints hold gelu (tanh), relu or silu")
    return names[activation]

def gpt1_weight_map(c: ModelConfig) -> list[WeightMap]:
    t = "transformer."
    m = [WeightMap("wte.weight", (t + "tokens_embed.weight",)), WeightMap("wpe.weight", (t + "positions_embed.weight",))]
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}.", f"{t}h.{i}."
        pairs = [("ln1", "ln_1", False), ("attn.qkv", "attn.c_attn", True), ("attn.proj", "attn.c_proj", True),
                 ("ln2", "ln_2", False), ("mlp.fc", "mlp.c_fc", True), ("mlp.proj", "mlp.c_proj", True)]
        for a, b, conv in pairs:
            m.append(WeightMap(ours + a + ".weight", (theirs + b + ".weight",), transpose=conv))
            m.append(WeightMap(ours + a + ".bias", (theirs + b + ".bias",)))
    return m

# --- OPT -----------------------------------------------------------------------------------------

def opt_config_from_hf(hf: dict) -> ModelConfig:
    if not hf.get("do_layer_norm_before", True):
        refuse("opt", "do_layer_norm_before", False, "only pre-LN OPT models (all but opt-350m) are implemented")
    if hf.get("word_embed_proj_dim", hf["hidden_size"]) != hf["hidden_size"]:
        refuse("opt", "word_embed_proj_dim", hf["word_embed_proj_dim"], "it must equal hidden_size")
    if hf.get("_remove_final_layer_norm"):
        refuse("opt", "_remove_final_layer_norm", True, "the final layer norm is always present")
    if hf.get("layer_norm_elementwise_affine") is False:
        refuse("opt", "layer_norm_elementwise_affine", False, "layer norms have weights and biases")
    act = hf.get("activation_function", "relu")
    if act not in ("relu", "gelu"):
        refuse("opt", "activation_function", act, "use relu or gelu")
    return ModelConfig.for_family(
        "opt", vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
        n_embd=hf["hidden_size"], intermediate_size=hf["ffn_dim"], block_size=hf["max_position_embeddings"],
        activation=act, bias=hf.get("enable_bias", True), tie_word_embeddings=hf.get("tie_word_embeddings", True),
        initializer_range=hf.get("init_std", 0.02), **_ids(hf))

def opt_config_to_hf(c: ModelConfig) -> dict:
    return dict(architectures=["OPTForCausalLM"], model_type="opt", vocab_size=c.vocab_size,
                num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, hidden_size=c.n_embd,
                word_embed_proj_dim=c.n_embd, ffn_dim=c.intermediate_size, max_position_embeddings=c.block_size,
                activation_function=c.activation, enable_bias=c.bias, do_layer_norm_before=True,
                tie_word_embeddings=c.tie_word_embeddings, init_std=c.initializer_range, dropout=c.dropout,
                attention_dropout=c.dropout)

def opt_weight_map(c: ModelConfig) -> list[WeightMap]:
    d = "model.decoder."
    m = [WeightMap("wte.weight", (d + "embed_tokens.weight",)), WeightMap("wpe.weight", (d + "embed_positions.weight",))]
    qkv = (c.n_embd, c.n_embd, c.n_embd)
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}.", f"{d}layers.{i}."
        params = ("weight", "bias") if c.bias else ("weight",)
        for p in params:
            m.append(WeightMap(f"{ours}attn.qkv.{p}", tuple(f"{theirs}self_attn.{x}_proj.{p}" for x in "qkv"), qkv))
            m.append(WeightMap(f"{ours}attn.proj.{p}", (f"{theirs}self_attn.out_proj.{p}",)))
            m.append(WeightMap(f"{ours}mlp.fc.{p}", (f"{theirs}fc1.{p}",)))
            m.append(WeightMap(f"{ours}mlp.proj.{p}", (f"{theirs}fc2.{p}",)))
        for p in ("weight", "bias"):
            m.append(WeightMap(f"{ours}ln1.{p}", (f"{theirs}self_attn_layer_norm.{p}",)))
            m.append(WeightMap(f"{ours}ln2.{p}", (f"{theirs}final_layer_norm.{p}",)))
    m += [WeightMap("ln_f.weight", (d + "final_layer_norm.weight",)), WeightMap("ln_f.bias", (d + "final_layer_norm.bias",))]
    return m

# --- Llama family: llama, mistral, qwen2 ---------------------------------------------------------

def llama_config_from_hf(hf: dict) -> ModelConfig:
    family = hf["model_type"]
    if hf.get("hidden_act", "silu") != "silu":
        refuse(family, "hidden_act", hf["hidden_act"], "the Llama family uses silu")
    attention_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
    if attention_bias != mlp_bias:
        refuse(family, "attention_bias/mlp_bias", (attention_bias, mlp_bias), "both must be equal")
    sliding = hf.get("sliding_window")
    if family == "qwen2" and not hf.get("use_sliding_window", False):
        sliding = None
    return ModelConfig.for_family(
        family, vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"], n_embd=hf["hidden_size"],
        head_dim=hf.get("head_dim"), intermediate_size=hf["intermediate_size"],
        block_size=hf["max_position_embeddings"], norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=_rope_theta(hf),
        sliding_window=sliding, bias=attention_bias, qkv_bias=True if family == "qwen2" else attention_bias,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        initializer_range=hf.get("initializer_range", 0.02), **_ids(hf))

_ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}

def llama_config_to_hf(c: ModelConfig) -> dict:
    hf = dict(architectures=[_ARCH[c.family]], model_type=c.family, vocab_size=c.vocab_size,
              num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
              hidden_size=c.n_embd, head_dim=c.head_dim, intermediate_size=c.intermediate_size,
              max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta,
              hidden_act="silu", tie_word_embeddings=c.tie_word_embeddings, initializer_range=c.initializer_range,
              attention_dropout=c.dropout)
    if c.family == "llama":
        hf.update(attention_bias=c.bias, mlp_bias=c.bias)
    if c.family == "mistral":
        hf["sliding_window"] = c.sliding_window
    if c.family == "qwen2":
        hf.update(use_sliding_window=c.sliding_window is not None, sliding_window=c.sliding_window)
    return hf

def llama_weight_map(c: ModelConfig) -> list[WeightMap]:
    m = [WeightMap("wte.weight", ("model.embed_tokens.weight",))]
    qkv = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.n_kv_head * c.head_dim)
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        m.append(WeightMap(f"{ours}ln1.weight", (f"{theirs}input_layernorm.weight",)))
        m.append(WeightMap(f"{ours}ln2.weight", (f"{theirs}post_attention_layernorm.weight",)))
        for p in ("weight", "bias") if c.qkv_bias else ("weight",):
            m.append(WeightMap(f"{ours}attn.qkv.{p}", tuple(f"{theirs}self_attn.{x}_proj.{p}" for x in "qkv"), qkv))
        for p in ("weight", "bias") if c.bias else ("weight",):
            m.append(WeightMap(f"{ours}attn.proj.{p}", (f"{theirs}self_attn.o_proj.{p}",)))
            m.append(WeightMap(f"{ours}mlp.fc.{p}", (f"{theirs}mlp.gate_proj.{p}", f"{theirs}mlp.up_proj.{p}"),
                               (c.intermediate_size, c.intermediate_size)))
            m.append(WeightMap(f"{ours}mlp.proj.{p}", (f"{theirs}mlp.down_proj.{p}",)))
    m.append(WeightMap("ln_f.weight", ("model.norm.weight",)))
    return m

FAMILIES: dict[str, Family] = {
    "gpt2": Family(gpt2_config_from_hf, gpt2_config_to_hf, gpt2_weight_map, DecoderLM, "transformer."),
    "opt": Family(opt_config_from_hf, opt_config_to_hf, opt_weight_map, DecoderLM, "model."),
    "openai-gpt": Family(gpt1_config_from_hf, gpt1_config_to_hf, gpt1_weight_map, DecoderLM, "transformer.",
                         unused=("transformer.position_ids",)),
    "llama": Family(llama_config_from_hf, llama_config_to_hf, llama_weight_map, DecoderLM, "model."),
    "mistral": Family(llama_config_from_hf, llama_config_to_hf, llama_weight_map, DecoderLM, "model."),
    "qwen2": Family(llama_config_from_hf, llama_config_to_hf, llama_weight_map, DecoderLM, "model."),
    **SEQ2SEQ_FAMILIES,
}
