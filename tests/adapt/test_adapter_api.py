"""Using adapters: several on one loaded model, switched without reloading it, disabled in a block, removed; the
verbs' --adapter and `lmforge merge`; bad input (an adapter for another base, an unknown target, a missing or
corrupt file, r <= 0, an adapter folder given as the model) is one sentence, exit status 2, nothing changed."""

from __future__ import annotations

import json

import pytest
import torch

import lmforge
from hf_models import save_tiny, save_tiny_with_tokenizer
from lmforge.adapt import AdapterSettings, add_adapter, save_adapter
from lmforge.adapt.lora import LoRALinear
from lmforge.cli.main import main
from lmforge.errors import LmforgeError

IDS = torch.tensor([[5, 17, 33, 8, 41, 12]])


def random_lora(model, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny Llama, a LoRA and a prefix adapter for it, a LoRA for a GPT-2, and a GPT-2 with a tokenizer."""
    root = tmp_path_factory.mktemp("adapters")
    save_tiny("llama", root / "llama")
    save_tiny("gpt2", root / "gpt2")
    model = lmforge.load(root / "llama").model
    add_adapter(model, "lora", AdapterSettings("lora", r=4, target_modules="all-linear"))
    random_lora(model)
    save_adapter(model, root / "lora", base_name=str(root / "llama"))
    add_adapter(model, "prefix", AdapterSettings("prefix", num_virtual_tokens=3))
    save_adapter(model, root / "prefix", name="prefix")
    gpt2 = lmforge.load(root / "gpt2").model
    add_adapter(gpt2, "lora", AdapterSettings("lora", r=4))
    save_adapter(gpt2, root / "gpt2-lora")
    save_tiny_with_tokenizer(root / "chat")
    chat = lmforge.load(root / "chat").model
    add_adapter(chat, "lora", AdapterSettings("lora", r=4))
    random_lora(chat)
    save_adapter(chat, root / "chat-lora")
    return root


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS)


def test_adapters_switch_without_reloading_the_base(folders):
    base = logits(lmforge.load(folders / "llama").model)
    alone = {name: logits(lmforge.load(folders / "llama", adapter=folders / name).model) for name in ("lora", "prefix")}
    ckpt = lmforge.load(folders / "llama", adapter=folders / "lora")
    ckpt.add_adapter("prefix", folders / "prefix")
    assert ckpt.adapters == ["default", "prefix"] and ckpt.active_adapter == "default"
    assert torch.equal(logits(ckpt.model), alone["lora"])
    ckpt.set_adapter("prefix")
    assert torch.equal(logits(ckpt.model), alone["prefix"])
    with ckpt.disable_adapter():
        assert torch.equal(logits(ckpt.model), base)
    assert torch.equal(logits(ckpt.model), alone["prefix"])
    ckpt.set_adapter("default")
    assert torch.equal(logits(ckpt.model), alone["lora"])
    ckpt.remove_adapter("default")
    ckpt.remove_adapter("prefix")
    assert not any(isinstance(m, LoRALinear) for m in ckpt.model.modules())
    assert ckpt.model.state_dict().keys() == lmforge.load(folders / "llama").model.state_dict().keys()
    assert torch.equal(logits(ckpt.model), base)
    with pytest.raises(LmforgeError, match="no adapter named 'gone'"):
        ckpt.set_adapter("gone")


def test_an_adapter_for_another_base_names_a_tensor_and_changes_nothing(folders, tmp_path):
    ckpt = lmforge.load(folders / "llama")
    with pytest.raises(LmforgeError, match=r"transformer\.h\.0\.attn\.c_attn\..* another base model"):
        ckpt.add_adapter("x", folders / "gpt2-lora")
    model = lmforge.load(folders / "llama").model
    model.blocks[0].attn.qkv = torch.nn.Linear(40, 64, bias=False)  # a wider input than the adapter's A was made for
    with pytest.raises(LmforgeError, match=r"model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight has shape .* needs"):
        add_adapter(model, "x", folders / "lora")
    assert not any(isinstance(m, LoRALinear) for m in model.modules()) and ckpt.adapters == []


@pytest.mark.parametrize("case", ["no weights", "corrupt weights", "bad json", "rank 0", "unknown method",
                                  "unknown target", "dora"])
def test_bad_adapter_folders_are_one_sentence(case, folders, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((folders / "lora" / "adapter_config.json").read_text())
    weights = (folders / "lora" / "adapter_model.safetensors").read_bytes()
    expected = {"no weights": "has no adapter_model.safetensors", "corrupt weights": "corrupt or truncated",
                "bad json": "not valid JSON", "rank 0": "rank r must be at least 1",
                "unknown method": "peft_type 'LOHA' is not supported", "dora": "use_dora=True is not supported",
                "unknown target": "'query' names no linear module"}[case]
    if case == "corrupt weights":
        weights = weights[:len(weights) // 2]
    if case != "no weights":
        (bad / "adapter_model.safetensors").write_bytes(weights)
    config.update({"rank 0": {"r": 0}, "unknown method": {"peft_type": "LOHA"}, "dora": {"use_dora": True}}.get(case, {}))
    text = "{" if case == "bad json" else json.dumps(config)
    (bad / "adapter_config.json").write_text(text)
    if case == "unknown target":
        (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
        rc = main(["train", "--init_from", str(folders / "chat"), "--data.source", str(tmp_path / "text.txt"),
                   "--adapter.method", "lora", "--adapter.targets", "query", "--out_dir", str(tmp_path / "run")])
    else:
        rc = main(["score", str(folders / "llama"), "--adapter", str(bad), "--text", "hello"])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_adapter_folder_given_as_the_model_says_so(folders, capsys):
    assert main(["generate", str(folders / "lora"), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert "is an adapter folder" in err and f"--adapter {folders / 'lora'}" in err and str(folders / "llama") in err


def test_the_verbs_take_an_adapter(folders, tmp_path, capsys):
    model, adapter = str(folders / "chat"), str(folders / "chat-lora")
    for argv in (["generate", model, "--prompt", "The quick", "--max-new-tokens", "5", "--json"],
                 ["score", model, "--text", "The quick brown fox", "--json"]):
        assert main(argv) == 0
        plain = capsys.readouterr().out
        assert main(argv + ["--adapter", adapter]) == 0
        assert capsys.readouterr().out != plain
    (tmp_path / "prompts.txt").write_text("The quick\n")
    assert main(["decode-compare", model, "--adapter", adapter, "--prompts", str(tmp_path / "prompts.txt"),
                 "--strategies", "greedy", "--max-new-tokens", "4", "--out", str(tmp_path / "lab")]) == 0
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"source": "The quick", "target": "brown fox"}) + "\n")
    assert main(["evaluate", model, "--adapter", adapter, "--data", str(tmp_path / "pairs.jsonl"), "--metrics",
                 "rouge", "--max-new-tokens", "4", "--out", str(tmp_path / "eval")]) == 0


def test_merge_writes_a_plain_folder_and_refuses_prefix_adapters(folders, tmp_path, capsys):
    assert main(["merge", str(folders / "llama"), str(folders / "lora"), str(tmp_path / "merged")]) == 0
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = logits(lmforge.load(tmp_path / "merged").model)
    assert (merged - logits(lmforge.load(folders / "llama", adapter=folders / "lora").model)).abs().max() <= 1e-5
    assert main(["merge", str(folders / "llama"), str(folders / "prefix"), str(tmp_path / "no")]) == 2
    assert "only LoRA adapters merge" in capsys.readouterr().err and not (tmp_path / "no").exists()
    with pytest.raises(LmforgeError, match="merge_adapter"):
        lmforge.save(lmforge.load(folders / "llama", adapter=folders / "lora").model, tmp_path / "x")


def test_an_adapter_by_hub_name(hub, tmp_path, capsys):
    model = lmforge.load("gpt2").model
    add_adapter(model, "default", AdapterSettings("lora", r=2, base_model_name_or_path="gpt2"))
    hub.add_folder("someone/gpt2-lora", save_adapter(model, tmp_path / "lora"))
    assert main(["generate", "gpt2", "--adapter", "someone/gpt2-lora", "--prompt", "Hello", "--max-new-tokens", "3"]) == 0
    assert main(["generate", "someone/gpt2-lora", "--prompt", "Hello"]) == 2
    assert "is a PEFT adapter" in capsys.readouterr().err
