"""Translation between Hugging Face checkpoints and `EncoderDecoderLM` for the BART and T5 families.

The entries of `SEQ2SEQ_FAMILIES` are part of `families.FAMILIES`. The token embedding has
several names in these checkpoints (`shared.weight`, `encoder.embed_tokens.weight`,
`decoder.embed_tokens.weight`): all of them are accepted, and only the one transformers expects
is written.
"""

from __future__ import annotations

from lmforge.config import EncDecConfig, encdec_family_defaults
from lmforge.errors import LmforgeError
from lmforge.hub.family import Family, WeightMap, refuse
from lmforge.models.encdec import EncoderDecoderLM

_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "silu": "silu"}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def _seq2seq_ids(hf: dict, family: str) -> dict:
    """Special token ids; absent ones take the family's defaults (as transformers' config classes do)."""
    defaults = encdec_family_defaults(family)
    ids = {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "forced_bos_token_id",
                 "forced_eos_token_id"):
        value = hf.get(name, defaults.get(name))
        ids[name] = value[0] if isinstance(value, list) else value
    if ids["decoder_start_token_id"] is None:
        ids["decoder_start_token_id"] = ids["pad_token_id"]
    return ids


def _check_exportable(c: EncDecConfig, knobs: tuple[str, ...]) -> None:
    reference = EncDecConfig.for_family(c.family)
    for knob in knobs:
        if getattr(c, knob) != getattr(reference, knob):
            raise LmforgeError(f"a {c.family} model with {knob}={getattr(c, knob)!r} cannot be saved in the Hugging Face "
                               f"{c.family} format (it needs {knob}={getattr(reference, knob)!r})")


def _attention(ours: str, theirs: str, q: str, k: str, v: str, o: str, inner: int, params) -> list[WeightMap]:
    m = []
    for p in params:
        m.append(WeightMap(f"{ours}.q.{p}", (f"{theirs}.{q}.{p}",)))
        m.append(WeightMap(f"{ours}.kv.{p}", (f"{theirs}.{k}.{p}", f"{theirs}.{v}.{p}"), (inner, inner)))
        m.append(WeightMap(f"{ours}.o.{p}", (f"{theirs}.{o}.{p}",)))
    return m


# --- BART ----------------------------------------------------------------------------------------

_BART_KNOBS = ("bias", "norm", "norm_eps", "post_norm", "embedding_norm", "position", "position_offset",
               "attention_scale", "final_logits_bias", "gated_mlp", "scale_decoder_outputs")


def bart_config_from_hf(hf: dict) -> EncDecConfig:
    for enc, dec, default in (("encoder_attention_heads", "decoder_attention_heads", 16),
                              ("encoder_ffn_dim", "decoder_ffn_dim", 4096)):
        if hf.get(enc, default) != hf.get(dec, default):
            refuse("bart", f"{enc}/{dec}", (hf.get(enc, default), hf.get(dec, default)),
                    "the encoder and the decoder must have the same width")
    for flag in ("normalize_before", "add_final_layer_norm"):
        if hf.get(flag):
            refuse("bart", flag, True, "BART is post-norm without a final layer norm")
    act = hf.get("activation_function", "gelu")
    if act not in _ACT:
        refuse("bart", "activation_function", act, f"use one of {sorted(_ACT)}")
    return EncDecConfig.for_family(
        "bart", vocab_size=hf.get("vocab_size", 50265), d_model=hf.get("d_model", 1024),
        n_head=hf.get("encoder_attention_heads", 16), d_ff=hf.get("encoder_ffn_dim", 4096),
        n_encoder_layer=hf.get("encoder_layers", 12), n_decoder_layer=hf.get("decoder_layers", 12),
        max_position_embeddings=hf.get("max_position_embeddings", 1024), activation=_ACT[act],
        scale_embedding=hf.get("scale_embedding", False), tie_word_embeddings=hf.get("tie_word_embeddings", True),
        dropout=hf.get("dropout", 0.1), attention_dropout=hf.get("attention_dropout", 0.0),
        initializer_range=hf.get("init_std", 0.02), **_seq2seq_ids(hf, "bart"))


def bart_config_to_hf(c: EncDecConfig) -> dict:
    _check_exportable(c, _BART_KNOBS)
    if c.head_dim * c.n_head != c.d_model:
        raise LmforgeError(f"a bart model needs head_dim * n_head == d_model ({c.head_dim} * {c.n_head} != {c.d_model})")
    return dict(architectures=["BartForConditionalGeneration"], model_type="bart", is_encoder_decoder=True,
                vocab_size=c.vocab_size, d_model=c.d_model, encoder_layers=c.n_encoder_layer,
                decoder_layers=c.n_decoder_layer, encoder_attention_heads=c.n_head, decoder_attention_heads=c.n_head,
                encoder_ffn_dim=c.d_ff, decoder_ffn_dim=c.d_ff, max_position_embeddings=c.max_position_embeddings,
                activation_function=_ACT_TO_HF[c.activation], scale_embedding=c.scale_embedding,
                tie_word_embeddings=c.tie_word_embeddings, init_std=c.initializer_range, dropout=c.dropout,
                attention_dropout=c.attention_dropout, activation_dropout=0.0,
                decoder_start_token_id=c.decoder_start_token_id, forced_bos_token_id=c.forced_bos_token_id,
                forced_eos_token_id=c.forced_eos_token_id)


def bart_weight_map(c: EncDecConfig) -> list[WeightMap]:
    inner, wb = c.n_head * c.head_dim, ("weight", "bias")
    m = [WeightMap("shared.weight", ("model.shared.weight",),
                   aliases=("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")),
         WeightMap("final_logits_bias", ("final_logits_bias",), optional=True)]
    for stack, n_layer in (("encoder", c.n_encoder_layer), ("decoder", c.n_decoder_layer)):
        d = f"model.{stack}."
        m.append(WeightMap(f"{stack}.positions.weight", (d + "embed_positions.weight",)))
        m += [WeightMap(f"{stack}.embedding_norm.{p}", (f"{d}layernorm_embedding.{p}",)) for p in wb]
        for i in range(n_layer):
            ours, theirs = f"{stack}.layers.{i}.", f"{d}layers.{i}."
            m += _attention(ours + "self_attn", theirs + "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", inner, wb)
            norms = [("self_attn_norm", "self_attn_layer_norm"), ("mlp_norm", "final_layer_norm")]
            if stack == "decoder":
                m += _attention(ours + "cross_attn", theirs + "encoder_attn", "q_proj", "k_proj", "v_proj", "out_proj",
                                inner, wb)
                norms.append(("cross_attn_norm", "encoder_attn_layer_norm"))
            for a, b in [*norms, ("mlp.fc", "fc1"), ("mlp.proj", "fc2")]:
                m += [WeightMap(f"{ours}{a}.{p}", (f"{theirs}{b}.{p}",)) for p in wb]
    return m


# --- T5, T5 v1.1, Flan-T5 ------------------------------------------------------------------------

_T5_KNOBS = ("bias", "norm", "post_norm", "embedding_norm", "position", "attention_scale", "final_logits_bias",
             "scale_embedding")


def t5_config_from_hf(hf: dict) -> EncDecConfig:
    proj = hf.get("feed_forward_proj", "relu")
    gated = proj.startswith("gated-")
    act = "gelu_tanh" if proj == "gated-gelu" else _ACT.get(proj.removeprefix("gated-"))
    if act is None:
        refuse("t5", "feed_forward_proj", proj, "use relu, gated-gelu or another [gated-]{relu,gelu,gelu_new,silu}")
    tie = hf.get("tie_word_embeddings", True)
    return EncDecConfig.for_family(
        "t5", vocab_size=hf.get("vocab_size", 32128), d_model=hf.get("d_model", 512), head_dim=hf.get("d_kv", 64),
        d_ff=hf.get("d_ff", 2048), n_head=hf.get("num_heads", 8), n_encoder_layer=hf.get("num_layers", 6),
        n_decoder_layer=hf.get("num_decoder_layers") or hf.get("num_layers", 6),
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        dropout=hf.get("dropout_rate", 0.1), norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        initializer_factor=hf.get("initializer_factor", 1.0), activation=act, gated_mlp=gated,
        # transformers >= 5 writes tie_word_embeddings=true for every T5 and keeps the rescale apart
        tie_word_embeddings=tie, scale_decoder_outputs=hf.get("scale_decoder_outputs", tie),
        **_seq2seq_ids(hf, "t5"))


def t5_config_to_hf(c: EncDecConfig) -> dict:
    _check_exportable(c, _T5_KNOBS)
    if c.gated_mlp and c.activation == "gelu":
        raise LmforgeError("a t5 model with a gated exact GELU cannot be saved in the Hugging Face format "
                           "(its gated-gelu is the tanh approximation); use activation='gelu_tanh'")
    gated = "gated-" if c.gated_mlp else ""
    proj = "gated-gelu" if gated and c.activation == "gelu_tanh" else gated + _ACT_TO_HF[c.activation]
    return dict(architectures=["T5ForConditionalGeneration"], model_type="t5", is_encoder_decoder=True,
                vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.head_dim, d_ff=c.d_ff, num_heads=c.n_head,
                num_layers=c.n_encoder_layer, num_decoder_layers=c.n_decoder_layer,
                relative_attention_num_buckets=c.relative_attention_num_buckets,
                relative_attention_max_distance=c.relative_attention_max_distance, dropout_rate=c.dropout,
                layer_norm_epsilon=c.norm_eps, initializer_factor=c.initializer_factor, feed_forward_proj=proj,
                tie_word_embeddings=c.tie_word_embeddings, scale_decoder_outputs=c.scale_decoder_outputs,
                decoder_start_token_id=c.decoder_start_token_id, forced_bos_token_id=c.forced_bos_token_id,
                forced_eos_token_id=c.forced_eos_token_id)


def t5_weight_map(c: EncDecConfig) -> list[WeightMap]:
    inner = c.n_head * c.head_dim
    m = [WeightMap("shared.weight", ("shared.weight",), aliases=("encoder.embed_tokens.weight",
                                                                 "decoder.embed_tokens.weight"))]
    for stack, n_layer in (("encoder", c.n_encoder_layer), ("decoder", c.n_decoder_layer)):
        m.append(WeightMap(f"{stack}.relative_bias.embedding.weight",
                           (f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",)))
        m.append(WeightMap(f"{stack}.final_norm.weight", (f"{stack}.final_layer_norm.weight",)))
        for i in range(n_layer):
            ours, theirs = f"{stack}.layers.{i}.", f"{stack}.block.{i}.layer."
            m += _attention(ours + "self_attn", theirs + "0.SelfAttention", "q", "k", "v", "o", inner, ("weight",))
            m.append(WeightMap(ours + "self_attn_norm.weight", (theirs + "0.layer_norm.weight",)))
            ff = 1
            if stack == "decoder":
                m += _attention(ours + "cross_attn", theirs + "1.EncDecAttention", "q", "k", "v", "o", inner,
                                ("weight",))
                m.append(WeightMap(ours + "cross_attn_norm.weight", (theirs + "1.layer_norm.weight",)))
                ff = 2
            dense = f"{theirs}{ff}.DenseReluDense."
            fc = (dense + "wi_0.weight", dense + "wi_1.weight") if c.gated_mlp else (dense + "wi.weight",)
            m.append(WeightMap(ours + "mlp.fc.weight", fc, (c.d_ff, c.d_ff) if c.gated_mlp else None))
            m.append(WeightMap(ours + "mlp.proj.weight", (dense + "wo.weight",)))
            m.append(WeightMap(ours + "mlp_norm.weight", (f"{theirs}{ff}.layer_norm.weight",)))
    return m


SEQ2SEQ_FAMILIES: dict[str, Family] = {
    "bart": Family(bart_config_from_hf, bart_config_to_hf, bart_weight_map, EncoderDecoderLM, "model."),
    # old checkpoints hold a cross-attention position bias that T5 never uses
    "t5": Family(t5_config_from_hf, t5_config_to_hf, t5_weight_map, EncoderDecoderLM, "",
                 unused=("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)),
}
