"""Read and write Hugging Face model folders: config.json, *.safetensors (or pytorch_model.bin), tokenizer.

`load_folder` turns a folder into an lmforge model; `save_folder` writes a folder that
`transformers.AutoModelForCausalLM.from_pretrained` (or AutoModelForSeq2SeqLM) loads with the same logits.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_path
from lmforge.hub.families import FAMILIES
from lmforge.hub.family import WeightMap
from lmforge.hub.remote import resolve_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Checkpoint:
    """A model with what travels with it. Unpacks as `model, tokenizer = lmforge.load(path)`."""

    model: torch.nn.Module
    tokenizer: object | None = None
    generation_config: dict = field(default_factory=dict)
    path: Path | None = None
    stored_dtype: str = "float32"

    def __iter__(self):
        return iter((self.model, self.tokenizer))


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LmforgeError(f"{path} is not valid JSON ({exc}); the folder may be corrupt") from exc


def read_config(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise LmforgeError(f"model folder {folder} does not exist")
    path = folder / "config.json"
    if not path.is_file() and (folder / "adapter_config.json").is_file():
        base = read_json(folder / "adapter_config.json").get("base_model_name_or_path") or "its base model"
        raise LmforgeError(f"{folder} is an adapter folder (adapter_config.json), not a model; load its base model "
                           f"({base}) with the adapter: --adapter {folder} on the command line, "
                           f"lmforge.load(BASE, adapter=...) in Python")
    if not path.is_file():
        raise LmforgeError(f"{folder} has no config.json; give a Hugging Face or lmforge model folder")
    hf = read_json(path)
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise LmforgeError(f"{path}: model_type {model_type!r} is not supported; "
                           f"supported: {', '.join(sorted(FAMILIES))}")
    return hf


def load_torch_file(path: Path, map_location="cpu", mmap: bool = False,
                    fix: str = "re-save it as safetensors with the tool that wrote it"):
    """A tensor file in PyTorch's pickle format, read with `weights_only=True`: a file that pickles anything but
    tensors (and plain containers) is refused with a sentence (`fix` says what to do), never loaded unsafely."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise LmforgeError(f"{path} was refused because it holds objects other than tensors, which could run "
                               f"code when loaded; {fix}") from None
        raise LmforgeError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0]}); re-download or re-save "
                           "it") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise LmforgeError(f"{path} could not be read ({str(exc).splitlines()[0]}); the file may be truncated or "
                           "corrupt") from None


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder: model.safetensors, a sharded index, or pytorch_model.bin (weights only)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    try:
        if single.is_file():
            return load_file(single)
        if index.is_file():
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            if not shards:
                raise LmforgeError(f"{index} lists no weight files")
            state = {}
            for shard in shards:
                if not (folder / shard).is_file():
                    raise LmforgeError(f"shard {shard} named in {index.name} is missing from {folder}")
                state.update(load_file(folder / shard))
            return state
        bins = sorted(folder.glob("pytorch_model*.bin"))
        if bins:
            state = {}
            for b in bins:
                state.update(load_torch_file(b, mmap=True))
            return state
    except SafetensorError as exc:
        raise LmforgeError(f"the weights in {folder} are corrupt or truncated ({exc}); re-download or re-save them") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        if isinstance(exc, LmforgeError):
            raise
        raise LmforgeError(f"the weights in {folder} could not be read ({exc}); the file may be truncated") from exc
    raise LmforgeError(f"{folder} has no weights (model.safetensors, model.safetensors.index.json or pytorch_model.bin)")


def import_weights(hf_state: dict[str, torch.Tensor], maps: list[WeightMap], model: torch.nn.Module,
                   optional_prefix: str, source: str) -> dict[str, torch.Tensor]:
    """Translate Hugging Face tensors to lmforge names, checking that none is missing, extra or misshapen."""
    state = {k: v for k, v in hf_state.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    if optional_prefix and not any(k.startswith(optional_prefix) for k in state):
        state = {optional_prefix + k: v for k, v in state.items()}
    expected = model.state_dict()
    ours: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for m in maps:
        if m.ours not in expected:  # a bias-free model stored with the zero biases its format requires
            used.update(m.theirs)
            continue
        aliases = [a for a in m.aliases if a in state]
        theirs = (aliases[0],) if aliases and m.theirs[0] not in state else m.theirs
        missing = [t for t in theirs if t not in state]
        if missing and m.optional:
            ours[m.ours] = torch.zeros(expected[m.ours].shape, dtype=next(iter(state.values())).dtype)
            continue
        if missing:
            raise LmforgeError(f"{source} is missing the tensor {missing[0]}")
        parts = [state[t].t().contiguous() if m.transpose else state[t] for t in theirs]
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        for name, shape in [(theirs[0], tensor.shape), *((a, state[a].shape) for a in aliases)]:
            if tuple(shape) != tuple(expected[m.ours].shape):
                raise LmforgeError(f"{source}: tensor {name} has shape {tuple(state[name].shape)}, which does not "
                                   f"match config.json (expected {tuple(expected[m.ours].shape)} for {m.ours})")
        ours[m.ours] = tensor
        used.update(theirs, aliases)
    head = "lm_head.weight"
    if head in state:
        used.add(head)
        if model.config.tie_word_embeddings:
            embedding = next(n for n, p in model.named_parameters() if p is model.lm_head.weight)
            if not torch.equal(state[head], ours[embedding]):  # transformers unties such a head, and so do we
                model.config.tie_word_embeddings = False
        if not model.config.tie_word_embeddings:
            if tuple(state[head].shape) != tuple(expected[head].shape):
                raise LmforgeError(f"{source}: tensor {head} has shape {tuple(state[head].shape)}, which does not "
                                   f"match config.json (expected {tuple(expected[head].shape)})")
            ours[head] = state[head]
    elif not model.config.tie_word_embeddings:
        raise LmforgeError(f"{source} is missing the tensor {head} (the config says the output head is untied)")
    extra = sorted(set(state) - used)
    if extra:
        raise LmforgeError(f"{source} has the unexpected tensor {extra[0]}" +
                           (f" and {len(extra) - 1} more" if len(extra) > 1 else "") + "; it does not fit config.json")
    return ours


def export_weights(model: torch.nn.Module, maps: list[WeightMap]) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for m in maps:
        if m.ours not in state:  # a bias-free lmforge model written to a family whose format has biases
            weight = state[m.ours.rsplit(".", 1)[0] + ".weight"]
            out[m.theirs[0]] = torch.zeros(weight.shape[0], dtype=weight.dtype)
            continue
        tensor = state[m.ours]
        parts = tensor.split(list(m.sizes), dim=0) if m.sizes else [tensor]
        for name, part in zip(m.theirs, parts):
            out[name] = (part.t() if m.transpose else part).contiguous()
    if not model.config.tie_word_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"].contiguous()
    return out


def load_tokenizer(name_or_folder: str | os.PathLike):
    """The tokenizer of a folder, or of a Hub model name (resolved in the Hugging Face cache, its tokenizer
    files downloaded when needed)."""
    from lmforge.tokenizer import Tokenizer

    folder = Path(name_or_folder)
    return Tokenizer.from_pretrained(folder if folder.is_dir() else resolve_model(folder, need="tokenizer"))


def load_folder(folder: str | os.PathLike, dtype: str | None = "float32", device: str = "cpu") -> Checkpoint:
    """Load a Hugging Face or lmforge model folder, or a Hub name (`gpt2`, `facebook/opt-125m@main`) from the
    Hugging Face cache, downloaded when needed (hub/remote.py). `dtype=None` keeps the stored dtype."""
    from lmforge.tokenizer import Tokenizer

    folder = resolve_model(folder)
    hf = read_config(folder)
    if "quantization_config" in hf:  # integer weights: hub/quantized.py (layers: quant/)
        from lmforge.hub.quantized import load_quantized

        return load_quantized(folder, hf, dtype, device)
    family = FAMILIES[hf["model_type"]]
    config = family.config_from_hf(hf)
    hf_state = {k: v for k, v in read_state_dict(folder).items() if k not in family.unused}
    with torch.device("meta"):
        model = family.model_class(config)
    maps = family.weight_map(config)
    state = import_weights(hf_state, maps, model, family.optional_prefix, str(folder))
    stored = next(iter(state.values())).dtype
    target = DTYPES[dtype] if dtype else stored
    model.load_state_dict({k: v.to(target) for k, v in state.items()}, strict=False, assign=True)
    for module in model.modules():  # non-persistent buffers are still on the meta device
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
    model.tie_weights()
    model.to(device).eval()
    tokenizer = None
    if any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        tokenizer = Tokenizer.from_pretrained(folder)
    stored_name = {v: k for k, v in DTYPES.items()}.get(stored, str(stored))
    return Checkpoint(model, tokenizer, read_generation_config(folder), folder, stored_name)


def non_finite_weights(model: torch.nn.Module) -> dict[str, int]:
    """The model's tensors that hold NaN or infinite values, with how many each holds."""
    found = {}
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            bad = tensor.numel() - int(torch.isfinite(tensor).sum())
            if bad:
                found[name] = bad
    return found


def require_finite_weights(model: torch.nn.Module, source) -> None:
    """Refuse a model whose weights hold NaN or infinite values: everything it computes would be NaN."""
    found = non_finite_weights(model)
    if found:
        first = next(iter(found))
        more = f" and {len(found) - 1} more tensor(s)" if len(found) > 1 else ""
        raise LmforgeError(f"the weights of {source} hold NaN or infinite values ({found[first]:,} in {first}{more}), "
                           "so it cannot produce text; use an earlier checkpoint of its run (best/ or last/)")


def read_generation_config(folder: Path) -> dict:
    """A folder's generation_config.json ({} without one), less transformers' bookkeeping (transformers_version,
    _from_model_config), which is not a generation parameter."""
    path = folder / "generation_config.json"
    config = read_json(path) if path.is_file() else {}
    return {k: v for k, v in config.items() if k != "transformers_version" and k[:1] != "_"}


def save_folder(model: torch.nn.Module, folder: str | os.PathLike, tokenizer=None,
                generation_config: dict | None = None, dtype: str | None = None) -> Path:
    """Write `model` (and its tokenizer) as a Hugging Face folder, atomically."""
    from lmforge.quant.model import is_quantized

    if is_quantized(model):  # integer weights: hub/quantized.py (layers: quant/)
        from lmforge.hub.quantized import save_quantized

        if dtype:
            raise LmforgeError("a quantized model is saved with its integer weights as they are; drop the dtype")
        return save_quantized(model, folder, tokenizer, generation_config)
    folder = Path(folder)
    family = FAMILIES[model.config.family]  # the config family is the HF model_type
    hf = family.config_to_hf(model.config)
    state = export_weights(model, family.weight_map(model.config))
    if dtype:
        state = {k: v.to(DTYPES[dtype]) for k, v in state.items()}
    dtype_name = {v: k for k, v in DTYPES.items()}[next(iter(state.values())).dtype]
    c = model.config
    hf.update(bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
              dtype=dtype_name, torch_dtype=dtype_name)
    hf = {k: v for k, v in hf.items() if v is not None}
    with atomic_path(folder, is_dir=True) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in state.items()}, tmp / "model.safetensors", metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp)
        if generation_config:
            (tmp / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")
    return folder
