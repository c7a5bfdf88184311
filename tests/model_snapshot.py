"""A comparable record of a model's module tree, for tests that something left the model as it was."""

from __future__ import annotations

from torch import nn


def _attributes(module: nn.Module) -> dict:
    """Each attribute by identity; a dict by the identities of its entries, a set by its members."""
    out = {}
    for key, value in vars(module).items():
        if isinstance(value, dict):
            out[key] = tuple((k, id(v)) for k, v in value.items())
        elif isinstance(value, set):
            out[key] = frozenset(value)
        else:
            out[key] = id(value)
    return out


def model_snapshot(model: nn.Module) -> tuple:
    """Every module object under its name with its attributes, and every state_dict tensor's storage and version."""
    return ([(name, id(m), _attributes(m)) for name, m in model.named_modules()],
            {k: (v.data_ptr(), v._version) for k, v in model.state_dict().items()})
