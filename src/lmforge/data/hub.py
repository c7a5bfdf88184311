"""Data sets on the Hub by name: `Abirate/english_quotes`, `knkarthick/samsum:validation`,
`Anthropic/hh-rlhf:harmless-base/test`, optionally `@revision` after the id.

The spec is `owner/name[@revision][:subset][/split]` (a lone word after the colon is a split when the data
set has such a split, else a subset). A subset is a config of the data set card's YAML (`configs:` with
`data_files`, as the datasets library reads it) or, without configs, a folder of the repository (its
`data_dir`). Splits come from the card's `data_files`, else from the file names the way the datasets library
infers them (`train-00000-of-00002.parquet`, `validation.csv`, `test/…`); files that name no split are the
train split. The files are the ones the repository publishes (Parquet, JSON Lines, JSON, CSV, TSV, gzipped or
not), fetched with huggingface_hub into the Hugging Face cache and read in place; offline, the cached files
of the revision are used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lmforge.data.records import record_format
from lmforge.errors import LmforgeError
from lmforge.hub import remote

SPLIT_WORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev"),
               "test": ("test", "testing", "eval", "evaluation")}
_DATASET_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?(:[\w./-]*)?$")


@dataclass
class HubSplit:
    """The local files of one split of a Hub data set."""

    repo: remote.Repo
    subset: str | None
    split: str
    files: list[Path]

    @property
    def description(self) -> str:
        return f"{self.repo.id}:{self.subset + '/' if self.subset else ''}{self.split}"


def is_dataset_id(spec: str) -> bool:
    """Whether `spec` has the shape of a Hub data set id (owner/name, optionally @revision and :subset/split)."""
    return bool(_DATASET_ID.match(spec)) and ".." not in spec


def parse(spec: str) -> tuple[str, str, str | None]:
    """(owner/name@revision, subset or None, split or None) of a spec."""
    name, _, rest = spec.partition(":")
    if not rest:
        return name, None, None
    subset, _, split = rest.rpartition("/")
    return name, subset or None, split or None


def resolve_dataset(spec: str, default_split: str = "train") -> HubSplit:
    """Find the files of a split of a Hub data set, downloading those the cache lacks."""
    name, subset, split = parse(spec)
    repo = remote.Repo(*remote.split_name(name), repo_type="dataset")
    commit, files = listing(repo)
    configs = card_configs(repo, commit, files)
    if subset is None and split is not None and split not in splits_of(files, configs, None):
        if split in configs or any(f.startswith(split + "/") for f in files):
            subset, split = split, None
    chosen = splits_of(files, configs, subset, f"the data set {repo.id}")
    split = split or (default_split if default_split in chosen else next(iter(chosen), default_split))
    split = {"val": "validation", "valid": "validation", "dev": "validation"}.get(split, split)
    if split not in chosen:
        where = f"{repo.id}" + (f" (subset {subset})" if subset else "")
        known = ", ".join(chosen) or "none"
        subsets = ", ".join(configs) or ", ".join(sorted({f.split("/")[0] for f in files if "/" in f})) or "none"
        offline = " in the cache (offline)" if remote.is_offline() else ""
        raise LmforgeError(f"the data set {where} has no split {split!r}{offline}; its splits: {known} (subsets: "
                           f"{subsets}); write it as {repo.id}:SUBSET/SPLIT")
    paths = remote.fetch(repo, commit, chosen[split])
    return HubSplit(repo, subset, split, paths)


def listing(repo: remote.Repo) -> tuple[str, list[str]]:
    """(commit, data files and card) of the revision: asked from the Hub, or offline from the cached snapshot."""
    if not remote.is_offline():
        from huggingface_hub import HfApi

        with remote.hub_errors(repo):
            try:
                info = HfApi(endpoint=remote.endpoint(), token=remote.token()).dataset_info(repo.id,
                                                                                             revision=repo.revision)
            except Exception as exc:  # the network is down: fall back to the cache, as transformers does
                if not _is_connection_error(exc) or repo.cached_commit() is None:
                    raise
                remote.say(f"{repo.id}: the Hub is unreachable ({exc}); using the cached files")
            else:
                repo.remember(info.sha, [])
                return info.sha, sorted(s.rfilename for s in info.siblings or [])
    commit = repo.cached_commit()
    snapshot = repo.snapshot(commit) if commit else None
    if snapshot is None or not snapshot.is_dir():
        raise remote.not_cached(repo, None, "offline mode is on (HF_HUB_OFFLINE or --offline)")
    return commit, sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())


def _is_connection_error(exc: Exception) -> bool:
    import httpx2

    return isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout))


def card_configs(repo: remote.Repo, commit: str, files: list[str]) -> dict[str, dict[str, list[str]]]:
    """subset -> split -> file patterns, from the `configs:` of the data set card (README.md); {} without."""
    import yaml

    if "README.md" not in files:
        return {}
    text = remote.fetch(repo, commit, ["README.md"])[0].read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    try:
        card = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return {}
    configs = {}
    entries = card.get("configs") if isinstance(card, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or "config_name" not in entry:
            continue
        data_files = entry.get("data_files")
        data_dir = entry.get("data_dir")
        if data_files is None and data_dir:
            data_files = f"{data_dir}/**"
        if isinstance(data_files, (str, list)) and not (isinstance(data_files, list) and data_files and
                                                       isinstance(data_files[0], dict)):
            data_files = [{"split": "train", "path": data_files}]
        splits = {}
        for item in data_files or []:
            paths = item.get("path", [])
            splits[str(item.get("split", "train"))] = [paths] if isinstance(paths, str) else list(paths)
        configs[str(entry["config_name"])] = splits
        if entry.get("default"):
            configs = {str(entry["config_name"]): splits, **configs}
    return configs


def splits_of(files: list[str], configs: dict, subset: str | None, where: str = "the data set") -> dict[str, list[str]]:
    """split -> data files of a subset (a card config or a folder), inferred from the names without a card."""
    data = [f for f in files if record_format(Path(f)) is not None and not f.startswith(".")]
    if configs:
        name = subset if subset is not None else ("default" if "default" in configs else next(iter(configs)))
        if name not in configs:
            raise LmforgeError(f"{where} has no subset {name!r}; its subsets: {', '.join(configs)}")
        return {split: [f for f in data if any(_glob(f, p) for p in patterns)]
                for split, patterns in configs[name].items()}
    if subset is not None:
        data = [f for f in data if f.startswith(subset.rstrip("/") + "/")]
    found: dict[str, list[str]] = {}
    for f in data:
        split = next((s for s, words in SPLIT_WORDS.items() if any(_names_split(f, w) for w in words)), None)
        found.setdefault(split, []).append(f)
    if set(found) == {None}:
        return {"train": found[None]}
    return {split: names for split, names in found.items() if split is not None}


def _names_split(path: str, word: str) -> bool:
    """Whether a path names a split word as a whole part: `train.csv`, `data/train-0000.parquet`, `test/x.json`."""
    return re.search(rf"(^|[/_.\- ]){word}([/_.\- 0-9]|$)", path.lower()) is not None


def _glob(path: str, pattern: str) -> bool:
    """fsspec-style matching: `**` crosses folders, `*` does not."""
    regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    return re.fullmatch(regex.replace(r"\?", "[^/]"), path) is not None
