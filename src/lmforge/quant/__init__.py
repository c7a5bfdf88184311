"""Weight-only quantized layers (int8 per output channel, int4 in groups), quantized folders, GGUF export."""

from lmforge.quant.layers import QuantLinear
from lmforge.quant.model import is_quantized, quantization_config, quantize_model, quantized_layers

__all__ = ["QuantLinear", "is_quantized", "quantization_config", "quantize_model", "quantized_layers"]
