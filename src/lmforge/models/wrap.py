"""The seam: replace chosen linear layers of a model with wrappers, and undo it.

A wrapper is any module with a `base` attribute holding the module it replaced (LoRA, int8 weights,
a decoding session's packed product). Layers are chosen by name, as PEFT's `target_modules`:

- a list of name suffixes: `["attn.qkv", "mlp.fc"]` picks every layer whose name is, or ends in, one of them;
- a string: a regular expression the whole name must match (`r"blocks\\.[0-3]\\.mlp\\..*"`), or `"all-linear"`:
  every linear layer but the output head `lm_head`;
- a compiled `re.Pattern`, matched the same way, or a predicate `(name, layer) -> bool`.

    names = wrap_linears(model, ["attn.qkv"], lambda name, layer: MyWrapper(layer))  # in place
    unwrap_linears(model)                                                          # the original layers back
    view = wrapped_view(model, "all-linear", factory)  # a new module tree; `model` is untouched

Names are module paths (`blocks.0.attn.qkv`). A linear layer is an `nn.Linear`, or a wrapper in its place:
in place, the module found at a name is wrapped (so a wrapper may wrap a wrapper); a view wraps the
innermost `nn.Linear`, so that its wrapper runs inside the in-place ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence

from torch import nn

from lmforge.errors import LmforgeError

Targets = str | Sequence[str] | re.Pattern | Callable[[str, nn.Module], bool]
Factory = Callable[[str, nn.Module], nn.Module]


def is_wrapper(module: nn.Module) -> bool:
    return isinstance(getattr(module, "base", None), nn.Module)


def innermost(module: nn.Module) -> nn.Module:
    """The layer under every wrapper of `module`."""
    while is_wrapper(module):
        module = module.base
    return module


def linear_layers(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every linear layer of `model` in module order: each `nn.Linear`, or the outermost
    wrapper in its place (a wrapper's inside is not listed)."""
    for name, child in model.named_children():
        path = prefix + name
        if isinstance(child, nn.Linear) or (is_wrapper(child) and isinstance(innermost(child), nn.Linear)):
            yield path, child
        else:
            yield from linear_layers(child, path + ".")


def select_linears(model: nn.Module, targets: Targets) -> list[str]:
    """The names of the linear layers `targets` chooses; a name pattern that matches none is an error."""
    layers = dict(linear_layers(model))
    if callable(targets) and not isinstance(targets, re.Pattern):
        return [name for name, layer in layers.items() if targets(name, layer)]
    if isinstance(targets, str) and targets == "all-linear":
        chosen = [name for name in layers if name != "lm_head"]
    elif isinstance(targets, (str, re.Pattern)):
        pattern = re.compile(targets) if isinstance(targets, str) else targets
        chosen = [name for name in layers if pattern.fullmatch(name)]
        if not chosen:
            _unknown(f"the pattern {pattern.pattern!r}", layers)
    else:
        for suffix in targets:
            if not any(_ends_with(name, suffix) for name in layers):
                _unknown(f"{suffix!r}", layers)
        chosen = [name for name in layers if any(_ends_with(name, suffix) for suffix in targets)]
    return chosen


def _ends_with(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def _unknown(what: str, layers: dict[str, nn.Module]) -> None:
    kinds = dict.fromkeys(re.sub(r"\.\d+\.", ".*.", name) for name in layers)
    raise LmforgeError(f"{what} names no linear layer of this model; its linear layers are: {', '.join(kinds)} "
                       "(* stands for each layer number)")


def wrap_linears(model: nn.Module, targets: Targets, factory: Factory) -> list[str]:
    """Replace each chosen layer of `model`, in place, with `factory(name, layer)`; returns the names."""
    names = select_linears(model, targets)
    for name in names:
        parent, attr = _parent(model, name)
        setattr(parent, attr, factory(name, getattr(parent, attr)))
    return names


def unwrap_linears(model: nn.Module, targets: Targets | None = None) -> list[str]:
    """Put back, in place, the `base` of each chosen wrapper (all by default); returns the names. Undoes one
    `wrap_linears`: the original modules return, and with them the original state_dict keys."""
    chosen = select_linears(model, targets) if targets is not None else [name for name, _ in linear_layers(model)]
    names = [name for name in chosen if is_wrapper(model.get_submodule(name))]
    for name in names:
        parent, attr = _parent(model, name)
        setattr(parent, attr, getattr(parent, attr).base)
    return names


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def wrapped_view(model: nn.Module, targets: Targets, factory: Factory) -> nn.Module:
    """A copy of `model`'s module tree in which the innermost `nn.Linear` of each chosen layer is replaced with
    `factory(name, linear)` (a predicate, too, is given the innermost `nn.Linear`). Every module is a new
    shallow copy sharing the original's parameters and buffers; `model` (its modules, their attributes, its
    state_dict) is not changed."""
    if callable(targets) and not isinstance(targets, re.Pattern):
        predicate = targets

        def targets(name: str, layer: nn.Module) -> bool:
            return predicate(name, innermost(layer))

    return _copy_tree(model, "", set(select_linears(model, targets)), factory)


def _copy_tree(module: nn.Module, path: str, chosen: set[str], factory: Factory) -> nn.Module:
    """`module` (at `path`) copied, with the chosen layers in it wrapped; a chosen wrapper is copied and the
    layer under it, its `base`, wrapped in turn."""
    if path in chosen and not is_wrapper(module):
        return factory(path, module)
    new = _shallow_copy(module)
    for name, child in module.named_children():
        if path in chosen:
            child_path = path if name == "base" else f"{path}.{name}"
        else:
            child_path = f"{path}.{name}" if path else name
        new._modules[name] = _copy_tree(child, child_path, chosen, factory)
    return new


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object with the same attributes, and its own dicts of parameters, buffers, submodules and
    hooks (the tensors and modules in them are shared)."""
    new = type(module).__new__(type(module))
    new.__dict__.update({k: v.copy() if isinstance(v, (dict, set)) else v for k, v in vars(module).items()})
    return new
