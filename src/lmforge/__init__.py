"""lmforge: a workbench for generative language modelling."""

__version__ = "0.1.0"

from lmforge.generate import GenerationConfig, Generator  # generate()/stream(): `from lmforge.generate import`
from lmforge.hub.hf import Checkpoint, load_folder, save_folder


def load(path, dtype: str | None = "float32", device: str = "cpu") -> Checkpoint:
    """Load a model folder (Hugging Face or lmforge) or a Hub name (`gpt2`). `model, tokenizer = lmforge.load(path)`."""
    return load_folder(path, dtype=dtype, device=device)


def save(model, path, tokenizer=None, generation_config: dict | None = None, dtype: str | None = None):
    """Save a model as a Hugging Face folder that transformers can load."""
    return save_folder(model, path, tokenizer=tokenizer, generation_config=generation_config, dtype=dtype)


__all__ = ["Checkpoint", "GenerationConfig", "Generator", "load", "save"]
