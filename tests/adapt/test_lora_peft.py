"""LoRA exchanged with PEFT both ways on tiny random transformers models: a folder PEFT writes loads in lmforge
with PEFT's logits, and one lmforge writes loads in `PeftModel.from_pretrained` with lmforge's (float32,
<= 1e-4), on every family, including targets that are slices of lmforge's fused q/k/v, gate/up and k/v layers
and GPT-2's Conv1D c_attn; merging gives the same logits and a folder transformers loads."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import lmforge
from hf_models import hf_position_ids, left_padded_batch, seq2seq_batch, tiny_hf_model, tiny_hf_seq2seq
from lmforge.adapt import AdapterSettings, add_adapter, merge_adapter, save_adapter

peft = pytest.importorskip("peft")

CASES = [  # (kind, PEFT target_modules, extra LoraConfig settings)
    ("gpt2", ["c_attn"], {}),
    ("gpt2", "all-linear", {"bias": "all"}),
    ("opt", ["q_proj", "v_proj"], {"bias": "lora_only"}),
    ("llama", ["q_proj", "v_proj"], {}),
    ("llama", ["k_proj", "up_proj", "o_proj"], {"use_rslora": True, "rank_pattern": {"up_proj": 2},
                                                 "alpha_pattern": {"k_proj": 3}}),
    ("mistral", "all-linear", {}),
    ("qwen2", ["q_proj", "v_proj", "gate_proj"], {"bias": "lora_only"}),
    ("bart", ["q_proj", "v_proj"], {"bias": "lora_only"}),
    ("t5", ["q", "v"], {}),
    ("t5", r".*DenseReluDense\.w[io]", {}),
]
IDS = [f"{k}-{t if isinstance(t, str) else '+'.join(t)}{'-' + '-'.join(e) if e else ''}" for k, t, e in CASES]
SEQ2SEQ = ("bart", "t5")


def hf_model(kind: str):
    return tiny_hf_seq2seq(kind) if kind in SEQ2SEQ else tiny_hf_model(kind)


def logits_pair(kind: str, hf, ours) -> tuple[torch.Tensor, torch.Tensor]:
    """(transformers' logits, lmforge's) on a padded batch, at the positions that count."""
    with torch.no_grad():
        if kind in SEQ2SEQ:
            ids, mask, dec, dec_mask = seq2seq_batch(start=hf.config.decoder_start_token_id)
            ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits
            mine = ours(ids, mask, dec, dec_mask)
            keep = dec_mask.bool()
        else:
            ids, mask = left_padded_batch()
            ref = hf(input_ids=ids, attention_mask=mask, position_ids=hf_position_ids(mask)).logits
            mine = ours(ids, attention_mask=mask)
            keep = mask.bool()
    return ref[keep], mine[keep]


def randomize(module: torch.nn.Module, seed: int = 1) -> None:
    """Give every LoRA B (zero at init) and trained bias random values, so the adapter is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name or (p.requires_grad and name.endswith("bias")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    folders = {}
    for kind in {c[0] for c in CASES}:
        folder = tmp_path_factory.mktemp(f"base-{kind}")
        hf_model(kind).save_pretrained(folder)
        folders[kind] = folder
    return folders


@pytest.mark.parametrize("kind, targets, extra", CASES, ids=IDS)
def test_a_folder_peft_writes_gives_peft_logits_in_lmforge(kind, targets, extra, bases, tmp_path):
    task = "SEQ_2_SEQ_LM" if kind in SEQ2SEQ else "CAUSAL_LM"
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type=task, **extra)
    hf = peft.get_peft_model(hf_model(kind), config)
    randomize(hf)
    hf.save_pretrained(tmp_path / "adapter")
    hf.eval()
    ckpt = lmforge.load(bases[kind], adapter=tmp_path / "adapter")
    ref, ours = logits_pair(kind, hf, ckpt.model)
    assert (ref - ours).abs().max() <= 1e-4
    with hf.disable_adapter(), ckpt.disable_adapter():
        base_ref, base_ours = logits_pair(kind, hf, ckpt.model)
    if extra.get("bias", "none") == "none":  # PEFT leaves trained biases in place when disabled; lmforge does not
        assert (base_ref - base_ours).abs().max() <= 1e-4
    assert (base_ours - ours).abs().max() > 1e-3  # the adapter does something


@pytest.mark.parametrize("kind, targets, extra", CASES, ids=IDS)
def test_a_folder_lmforge_writes_gives_lmforge_logits_in_peft(kind, targets, extra, bases, tmp_path):
    ckpt = lmforge.load(bases[kind])
    settings = AdapterSettings("lora", base_model_name_or_path=str(bases[kind]), r=4, lora_alpha=8,
                               target_modules=targets, bias=extra.get("bias", "none"),
                               use_rslora=extra.get("use_rslora", False), rank_pattern=extra.get("rank_pattern", {}),
                               alpha_pattern=extra.get("alpha_pattern", {}))
    add_adapter(ckpt.model, "default", settings)
    for name, p in ckpt.model.named_parameters():  # as training would: the adapter's biases too
        p.requires_grad_("lora_" in name or (extra.get("bias") == "all" and name.endswith("bias")))
    randomize(ckpt.model)
    save_adapter(ckpt.model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(bases[kind])
    keys = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert all(k.startswith("base_model.model.") for k in keys)
    hf = peft.PeftModel.from_pretrained(hf_model(kind), tmp_path / "adapter").eval()
    ref, ours = logits_pair(kind, hf, ckpt.model)
    assert (ref - ours).abs().max() <= 1e-4


def test_gpt2_c_attn_is_stored_in_linear_orientation_as_peft_does(bases, tmp_path):
    """PEFT keeps lora_A (r, in) and lora_B (out, r) for GPT-2's Conv1D c_attn too (fan_in_fan_out only changes how
    it merges), and so does lmforge."""
    ckpt = lmforge.load(bases["gpt2"])
    add_adapter(ckpt.model, "default", AdapterSettings("lora", r=4, target_modules=["c_attn"]))
    save_adapter(ckpt.model, tmp_path / "a")
    keys = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert keys["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].shape == (4, 32)
    assert keys["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].shape == (96, 4)
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["fan_in_fan_out"] is True


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bart", "t5"])
def test_merging_keeps_the_logits_and_writes_a_folder_transformers_loads(kind, bases, tmp_path):
    import transformers

    ckpt = lmforge.load(bases[kind])
    add_adapter(ckpt.model, "default", AdapterSettings("lora", r=4, lora_alpha=16, target_modules="all-linear"))
    randomize(ckpt.model)
    hf = hf_model(kind)
    _, adapted = logits_pair(kind, hf, ckpt.model)
    merge_adapter(ckpt.model)
    assert not any("lora" in name for name, _ in ckpt.model.named_parameters())
    _, merged = logits_pair(kind, hf, ckpt.model)
    assert (adapted - merged).abs().max() <= 1e-5
    lmforge.save(ckpt.model, tmp_path / "merged")
    auto = transformers.AutoModelForSeq2SeqLM if kind in SEQ2SEQ else transformers.AutoModelForCausalLM
    ref, _ = logits_pair(kind, auto.from_pretrained(tmp_path / "merged").eval(), ckpt.model)
    assert (ref - merged).abs().max() <= 1e-4
