"""Decoding: logits processors, stop strings, streaming detokenization and search strategies."""

from lmforge.generate.api import Completion, GenerationResult, Generator, generate, stream
from lmforge.generate.processors import GenerationConfig

__all__ = ["Completion", "GenerationConfig", "GenerationResult", "Generator", "generate", "stream"]
