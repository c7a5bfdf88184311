"""LoRA on a quantized base (the lecture's "LoRA on OPT-125m in 8-bit"): the adapter wraps the QuantLinear layers,
only the adapter trains while the integer weights stay bit for bit, the one training loop does it with
`quantize: int8`, and the PEFT adapter it saves works on the float base too."""

import json

import pytest
import torch

import lmforge
from hf_models import save_tiny
from lmforge.adapt import AdapterSettings, add_adapter
from lmforge.adapt.lora import LoRALinear
from lmforge.errors import LmforgeError
from lmforge.quant import QuantLinear, quantized_layers
from lmforge.tokenizer import Tokenizer
from lmforge.train import TrainConfig, train

CORPUS = "the king and the queen walked in the garden of the castle, and the knight sang to them. " * 30


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base") / "gpt2"
    save_tiny("gpt2", folder)
    Tokenizer.train_char([CORPUS]).save(folder)
    corpus = folder.parent / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    return folder


def test_the_adapter_wraps_the_integer_layer_and_alone_gets_gradients(base):
    model = lmforge.load(base, quantize="int8").model
    frozen = [(layer, layer.qweight.clone(), layer.scales.clone()) for layer in quantized_layers(model).values()]
    add_adapter(model, "a", AdapterSettings(method="lora", r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    wrapper = model.blocks[0].attn.qkv
    assert isinstance(wrapper, LoRALinear) and isinstance(wrapper.base, QuantLinear)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(3, 90, (4, 12), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(5):
        logits = model.train()(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    a_first_layer = model.blocks[0].attn.qkv.adapters["a"].lora_A[0]
    assert a_first_layer.grad.abs().sum() > 0  # gradients flow through the integer layers above it
    assert len(frozen) == 8 and len(quantized_layers(model)) == 8  # the same layers, under the adapters now
    assert all(torch.equal(layer.qweight, q) and torch.equal(layer.scales, s) for layer, q, s in frozen)


def test_training_with_quantize_int8_saves_an_adapter_that_works_on_the_float_base(base, tmp_path):
    config = {"out_dir": str(tmp_path / "run"), "init_from": str(base), "data.source": str(base.parent / "corpus.txt"),
              "quantize": "int8", "adapter.method": "lora", "adapter.r": 4, "adapter.alpha": 8,
              "adapter.targets": "c_attn,c_fc", "learning_rate": 1e-2, "model.block_size": 16, "batch_size": 4,
              "max_iters": 8, "eval_interval": 4, "eval_iters": 2, "warmup_iters": 2, "log_interval": 2,
              "sample_tokens": 8, "device": "cpu", "threads": 2}
    result = train(config, quiet=True)
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [m["val_loss"] for m in metrics if "val_loss" in m]
    assert evals[-1] < evals[0]
    assert (result.best_dir / "adapter_config.json").is_file() and not (result.best_dir / "model.safetensors").exists()

    ids = torch.tensor([lmforge.load(base).tokenizer.encode("the queen and the knight")])
    with torch.inference_mode():
        on_int8 = lmforge.load(base, quantize="int8", adapter=result.best_dir)
        assert quantized_layers(on_int8.model)
        on_float = lmforge.load(base, adapter=result.best_dir)
        plain = lmforge.load(base).model(ids)
        adapted_int8, adapted_float = on_int8.model(ids), on_float.model(ids)
    # the adapter changes the float model, and as much as the int8 model differs from it (int8 tolerance)
    assert (adapted_float - plain).abs().max() > 1e-3
    assert (adapted_float - adapted_int8).abs().max() <= 0.01 * adapted_float.abs().max()


def test_quantize_without_an_adapter_and_a_quantized_base_without_one_are_refused(base, tmp_path):
    with pytest.raises(LmforgeError, match="train an adapter over them"):
        TrainConfig.load(overrides={"init_from": str(base), "quantize": "int8"})
    quantized = tmp_path / "int8"
    lmforge.save(lmforge.load(base, quantize="int8").model, quantized, tokenizer=lmforge.load(base).tokenizer)
    config = {"out_dir": str(tmp_path / "run"), "init_from": str(quantized),
              "data.source": str(base.parent / "corpus.txt"), "model.block_size": 16, "max_iters": 2,
              "device": "cpu"}
    with pytest.raises(LmforgeError, match="holds quantized .integer. weights, which do not train"):
        train(config, quiet=True)
