from lmforge.models.cache import KVCache
from lmforge.models.decoder import DecoderLM

__all__ = ["DecoderLM", "KVCache"]
