import itertools
import math

import pytest
import torch

from lmforge.cli.main import main
from lmforge.config import ModelConfig
from lmforge.errors import LmforgeError
from lmforge.models.decoder import DecoderLM
from lmforge.train import TrainConfig
from lmforge.train.config import parse_overrides
from lmforge.train.optim import lr_at, param_groups


def test_yaml_then_overrides_in_every_syntax(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  n_layer: 3\nlearning_rate: 1e-3\nmax_minutes: null\ndata:\n  source: foo.txt\n")
    cfg = TrainConfig.load(path, ["--model.n_head", "8", "--batch_size=3", "compile=true", "--max-iters", "7"])
    assert cfg.model.n_layer == 3 and cfg.model.n_head == 8 and cfg.batch_size == 3 and cfg.compile is True
    assert cfg.max_iters == 7 and cfg.learning_rate == 1e-3 and isinstance(cfg.learning_rate, float)
    assert cfg.data.source == "foo.txt" and cfg.max_minutes is None
    assert cfg.model.n_embd == TrainConfig().model.n_embd  # untouched fields keep the dataclass default
    assert TrainConfig.load(overrides={"model": {"n_layer": 2}, "max_minutes": "1.5"}).max_minutes == 1.5


def test_shipped_recipe_loads():
    cfg = TrainConfig.load("configs/shakespeare-char-cpu.yaml")
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size) == (4, 4, 128, 64)
    assert (cfg.batch_size, cfg.max_iters, cfg.decay_iters, cfg.beta2, cfg.model.bias) == (12, 2000, 2000, 0.99, False)
    assert (cfg.model.family, cfg.model.intermediate_size) == ("llama", 344)


@pytest.mark.parametrize("items, message", [
    (["--model.nlayer", "2"], "did you mean model.n_layer"),
    (["n_layer=2"], "did you mean model.n_layer"),
    (["--learnig_rate", "1"], "did you mean learning_rate"),
    (["--batch_size", "two"], "batch_size expects an int"),
    (["--model.bias", "maybe"], "model.bias expects a bool"),
    (["--max_iters", "1.5"], "max_iters expects an int"),
    (["--min_lr", "1"], "min_lr must be between 0 and learning_rate"),
])
def test_bad_overrides_name_the_key(items, message):
    with pytest.raises(LmforgeError, match=message):
        TrainConfig.load(overrides=items)


def test_unknown_yaml_key_names_the_closest(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  n_embed: 64\n")
    message = r"unknown config key 'model.n_embed' in .*run.yaml; did you mean model.n_embd"
    with pytest.raises(LmforgeError, match=message):
        TrainConfig.load(path)
    path.write_text("- a list\n")
    with pytest.raises(LmforgeError, match="mapping"):
        TrainConfig.load(path)


def test_cli_unknown_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's own exit
        main(["train", "--model.nlayer", "2"])
    assert exit_info.value.code == 2
    assert "did you mean --model.n_layer" in capsys.readouterr().err
    assert main(["train", "model.nlayer=2"]) == 2
    assert "did you mean model.n_layer" in capsys.readouterr().err


def test_override_parsing_keeps_strings():
    assert parse_overrides(TrainConfig, ["--sample_prompt", "To be", "data.source=a=b.txt"]) == {
        "sample_prompt": "To be", "data.source": "a=b.txt"}


def test_schedule_warmup_cosine_floor():
    kw = {"learning_rate": 1e-3, "min_lr": 1e-4, "warmup_iters": 10, "decay_iters": 110}
    assert lr_at(0, **kw) == pytest.approx(1e-3 / 11)
    assert lr_at(9, **kw) == pytest.approx(1e-3 * 10 / 11)
    assert lr_at(10, **kw) == pytest.approx(1e-3)
    assert lr_at(60, **kw) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr_at(110, **kw) == pytest.approx(1e-4) and lr_at(500, **kw) == pytest.approx(1e-4)
    assert lr_at(60, **kw, decay=False) == 1e-3
    values = [lr_at(i, **kw) for i in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert not math.isnan(lr_at(5, 1e-3, 1e-4, 0, 0))


def test_param_groups_decay_matrices_only():
    model = DecoderLM(ModelConfig.for_family("gpt2", vocab_size=11, n_layer=1, n_head=2, n_embd=8, block_size=8))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # the tied head counts once
    assert any(p is model.wte.weight for p in decay["params"])
    assert torch.is_tensor(model.wte.weight)
