"""lmforge: a workbench for generative language modelling."""

__version__ = "0.1.0"

from pathlib import Path

from lmforge.generate import GenerationConfig, Generator  # generate()/stream(): `from lmforge.generate import`
from lmforge.hub.hf import Checkpoint, load_folder, save_folder


def load(path, dtype: str | None = "float32", device: str = "cpu", adapter=None, quantize: str | None = None,
         group_size: int | None = None, quantize_head: bool = False):
    """Load a model folder (Hugging Face or lmforge) or a Hub name (`gpt2`). `model, tokenizer = lmforge.load(path)`.
    `adapter`: a PEFT adapter folder (LoRA, prefix or prompt tuning) to apply, as adapter "default"; its
    generation_config.json, if any, overrides the base's. The result takes more adapters
    (`add_adapter`, `set_adapter`, `disable_adapter`, `remove_adapter`, `merge_adapter`: lmforge.adapt).
    `quantize`: "int8" or "int4" quantizes a float model's linear layers at load (before the adapter goes on;
    lmforge.quant.quantize_model); a quantized folder loads as it is, without it."""
    from lmforge.adapt import AdaptableCheckpoint
    from lmforge.hub.hf import read_generation_config

    checkpoint = AdaptableCheckpoint.of(load_folder(path, dtype=dtype, device=device))
    if quantize is not None:
        from lmforge.quant import quantize_model

        quantize_model(checkpoint.model, quantize, group_size, head=quantize_head)
    if adapter is not None:
        checkpoint.add_adapter("default", adapter)
        if Path(adapter).is_dir():
            checkpoint.generation_config = {**checkpoint.generation_config, **read_generation_config(Path(adapter))}
    return checkpoint


def save(model, path, tokenizer=None, generation_config: dict | None = None, dtype: str | None = None):
    """Save a model as a Hugging Face folder that transformers can load (merge or save its adapters first)."""
    from lmforge.adapt import adapter_names
    from lmforge.errors import LmforgeError

    if adapter_names(model):
        raise LmforgeError("the model holds adapters; save them with save_adapter, or fold a LoRA adapter into the "
                           "weights with merge_adapter (lmforge merge) before saving the model")
    return save_folder(model, path, tokenizer=tokenizer, generation_config=generation_config, dtype=dtype)


__all__ = ["Checkpoint", "GenerationConfig", "Generator", "load", "save"]
