"""Hub names: `gpt2`, `facebook/bart-large-cnn@main` resolved to a folder in the cache transformers uses.

A local path always wins. Otherwise the name is a repository id on the Hub (`HF_ENDPOINT`, default
https://huggingface.co), optionally `@revision`, and its files land in the Hugging Face cache
(`HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache/huggingface/hub) with huggingface_hub, in the layout
transformers and the datasets library share: `models--owner--name/{blobs,refs,snapshots/<commit>}`.

A snapshot that already holds what lmforge reads (config, weights, tokenizer, and a known answer for the
optional files, whoever downloaded them) is used without a request. Else the repository's file list is
asked for once and only the missing files are fetched: the config, the generation config, the tokenizer
files, and one set of weights (model.safetensors, else every shard of the safetensors index, else
pytorch_model.bin). Files the repository lacks are recorded under `.no_exist/<commit>/`, as
huggingface_hub does, so the next run needs no request either. `HF_HUB_OFFLINE=1` or `--offline` reads
the cache only; `HF_TOKEN` (or `hf auth login`) opens gated and private repositories.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

from lmforge.errors import LmforgeError

DEFAULT_ENDPOINT = "https://huggingface.co"
WEIGHT_SETS = (("model.safetensors",), ("model.safetensors.index.json",), ("pytorch_model.bin",),
               ("pytorch_model.bin.index.json",))
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_EXTRAS = ("generation_config.json", *TOKENIZER_EXTRAS)
_REPO_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")

_options = {"offline": False, "verbose": False}


@contextlib.contextmanager
def options(offline: bool = False, verbose: bool = False) -> Iterator[None]:
    """Within the block, read the cache only (`offline`) and say which source a name resolved to (`verbose`)."""
    saved = dict(_options)
    _options.update(offline=offline or saved["offline"], verbose=verbose or saved["verbose"])
    try:
        yield
    finally:
        _options.update(saved)


def is_offline() -> bool:
    flags = (os.environ.get(name, "").strip().lower() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return _options["offline"] or any(flag in ("1", "true", "yes", "on") for flag in flags)


def say(text: str) -> None:
    if _options["verbose"]:
        print(f"lmforge: {text}", file=sys.stderr)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def hub_cache() -> Path:
    """The cache huggingface_hub (and so transformers and datasets) uses, read from the environment now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def token() -> str | None:
    """HF_TOKEN, else the token `hf auth login` stored; None when there is neither."""
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    from huggingface_hub import get_token

    return get_token()


def split_name(name: str) -> tuple[str, str]:
    """("owner/name", "revision") of "owner/name@revision"; the revision defaults to main."""
    repo_id, _, revision = str(name).partition("@")
    return repo_id, revision or "main"


def is_repo_id(text: str) -> bool:
    repo_id, _ = split_name(text)
    return bool(_REPO_ID.match(repo_id)) and ".." not in repo_id and not repo_id.startswith((".", "-"))


def local_or_name(name: str | os.PathLike, what: str) -> Path | None:
    """The local path when `name` exists on disk (preferred over a Hub repository of the same name), None for a
    Hub name; an error when it is neither."""
    path = Path(name).expanduser()
    if path.exists():
        if is_repo_id(str(name)):
            say(f"{name} is a local path; using it rather than the Hub repository of that name")
        return path
    if not is_repo_id(str(name)):
        raise LmforgeError(f"{what} {name} does not exist")
    return None


class Repo:
    """A repository in the cache: its folder, and the snapshot of a revision."""

    def __init__(self, repo_id: str, revision: str, repo_type: str = "model"):
        self.id, self.revision, self.type = repo_id, revision, repo_type
        self.folder = hub_cache() / f"{repo_type}s--{repo_id.replace('/', '--')}"

    @property
    def label(self) -> str:
        kind = "data set" if self.type == "dataset" else "model"
        return f"{kind} {self.id}" + (f"@{self.revision}" if self.revision != "main" else "")

    @property
    def url(self) -> str:
        return f"{endpoint()}/{'datasets/' if self.type == 'dataset' else ''}{self.id}"

    def cached_commit(self) -> str | None:
        if _COMMIT.match(self.revision):
            return self.revision
        ref = self.folder / "refs" / self.revision
        return ref.read_text().strip() if ref.is_file() else None

    def snapshot(self, commit: str) -> Path:
        return self.folder / "snapshots" / commit

    def state(self, commit: str, filename: str) -> str:
        """'present', 'absent' (the Hub said it does not exist) or 'unknown'."""
        if (self.snapshot(commit) / filename).is_file():
            return "present"
        return "absent" if (self.folder / ".no_exist" / commit / filename).is_file() else "unknown"

    def remember(self, commit: str, absent: list[str]) -> None:
        """Record the revision's commit and the files it lacks, in huggingface_hub's layout."""
        for filename in absent:
            marker = self.folder / ".no_exist" / commit / filename
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        if self.revision != commit:
            ref = self.folder / "refs" / self.revision
            ref.parent.mkdir(parents=True, exist_ok=True)
            tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
            tmp.write_text(commit)
            os.replace(tmp, ref)


# ---- which files a model needs ------------------------------------------------------------------

def missing_files(repo: Repo, commit: str, need: str) -> list[str]:
    """What a cached snapshot lacks for `need` ('model', 'tokenizer' or 'adapter'); [] when it is complete."""
    def state(filename: str) -> str:
        return repo.state(commit, filename)

    if need == "adapter":
        weights = any(state(f) == "present" for f in ADAPTER_WEIGHTS)
        return [f for f, ok in (("adapter_config.json", state("adapter_config.json") == "present"),
                                ("weights", weights)) if not ok]
    missing = []
    if need == "model":
        if state("config.json") != "present":
            missing.append("config.json")
        if not any(weights_complete(repo.snapshot(commit), files) for files in WEIGHT_SETS):
            missing.append("weights")
    tok, vocab, merges = state("tokenizer.json"), state("vocab.json"), state("merges.txt")
    if not (tok == "present" or (vocab == merges == "present") or
            (tok == "absent" and "absent" in (vocab, merges))):
        missing.append("tokenizer.json")
    extras = MODEL_EXTRAS if need == "model" else TOKENIZER_EXTRAS
    missing += [f for f in extras if state(f) == "unknown"]
    return missing


def weights_complete(folder: Path, files: tuple[str, ...]) -> bool:
    name = files[0]
    if not (folder / name).is_file():
        return False
    if not name.endswith(".index.json"):
        return True
    return all((folder / shard).is_file() for shard in shards(folder / name))


def shards(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise LmforgeError(f"{index} is not a valid weight index ({exc}); the download may be corrupt") from None
    return sorted(set(weight_map.values()))


def choose_files(repo: Repo, files: set[str], need: str) -> tuple[list[str], list[str]]:
    """(files to fetch, optional files the repository lacks) for `need`, from the repository's file list."""
    wanted: list[str] = []
    if need == "adapter":
        weights = next((w for w in ADAPTER_WEIGHTS if w in files), None)
        if "adapter_config.json" not in files or weights is None:
            raise LmforgeError(f"the {repo.label} has no adapter_config.json and adapter weights, so it is not a PEFT "
                               f"adapter repository; its files: {', '.join(sorted(files)[:12]) or 'none'}")
        return ["adapter_config.json", weights], []
    if need == "model":
        if "config.json" not in files and "adapter_config.json" in files:
            raise LmforgeError(f"the {repo.label} is a PEFT adapter (adapter_config.json), not a model; load its base "
                               f"model with the adapter: --adapter {repo.id} on the command line")
        if "config.json" not in files:
            raise LmforgeError(f"the {repo.label} has no config.json, so it is not a transformers model repository; "
                               f"its files: {', '.join(sorted(files)[:12]) or 'none'}")
        wanted.append("config.json")
        weights = next((w[0] for w in WEIGHT_SETS if w[0] in files), None)
        if weights is None:
            raise LmforgeError(f"the {repo.label} has no PyTorch weights (model.safetensors, a safetensors index or "
                               f"pytorch_model.bin); its files: {', '.join(sorted(files)[:12])}")
        wanted.append(weights)
    if "tokenizer.json" in files:
        wanted.append("tokenizer.json")
    elif {"vocab.json", "merges.txt"} <= files:
        wanted += ["vocab.json", "merges.txt"]
    extras = MODEL_EXTRAS if need == "model" else TOKENIZER_EXTRAS
    wanted += [f for f in extras if f in files]
    absent = [f for f in (*extras, "tokenizer.json", "vocab.json", "merges.txt") if f not in files]
    return wanted, absent


# ---- resolving and fetching -----------------------------------------------------------------------

def resolve_model(name: str | os.PathLike, need: str = "model") -> Path:
    """The folder of a model (`need='model'`), a tokenizer (`'tokenizer'`) or a PEFT adapter (`'adapter'`): a local
    path as it is, else a Hub name resolved in the cache and downloaded when the cache does not hold what is needed."""
    local = local_or_name(name, f"{need} folder" if need != "model" else "model folder")
    if local is not None:
        return local
    repo = Repo(*split_name(str(name)))
    commit = repo.cached_commit()
    missing = missing_files(repo, commit, need) if commit else ["everything"]
    if not missing:
        say(f"{name}: using the cached snapshot {repo.snapshot(commit)}")
        return repo.snapshot(commit)
    if is_offline():
        essential = [m for m in missing if m in ("config.json", "weights", "everything")]
        if commit and not essential and need == "model":
            say(f"{name}: offline, using the cached snapshot without {', '.join(missing)}")
            return repo.snapshot(commit)
        raise not_cached(repo, missing, "offline mode is on (HF_HUB_OFFLINE or --offline)")
    return download(repo, need, missing)


def download(repo: Repo, need: str = "model", missing: list[str] | None = None) -> Path:
    """Ask the Hub for the revision's file list and fetch what `need` requires into the cache."""
    from huggingface_hub import HfApi

    with hub_errors(repo, missing):
        api = HfApi(endpoint=endpoint(), token=token())
        info = (api.dataset_info if repo.type == "dataset" else api.model_info)(repo.id, revision=repo.revision)
        commit, files = info.sha, {s.rfilename for s in info.siblings or []}
        wanted, absent = choose_files(repo, files, need)
        fetch(repo, commit, wanted)
        for index in [f for f in wanted if f.endswith(".index.json")]:
            names = shards(repo.snapshot(commit) / index)
            lacking = [s for s in names if s not in files]
            if lacking:
                raise LmforgeError(f"{index} of the {repo.label} names {lacking[0]}, which the repository does not "
                                   "have; the repository is incomplete")
            fetch(repo, commit, names)
        repo.remember(commit, absent)
    say(f"{repo.id}: {len(wanted)} file(s) in {repo.snapshot(commit)}")
    return repo.snapshot(commit)


def fetch(repo: Repo, commit: str, filenames: list[str]) -> list[Path]:
    """Download files of a commit into the cache (each skipped when cached), with huggingface_hub's progress bar:
    a dropped connection is resumed with a range request, and a file appears in the snapshot only when whole."""
    from huggingface_hub import hf_hub_download

    paths = []
    with hub_errors(repo):
        for filename in filenames:
            path = hf_hub_download(repo.id, filename, repo_type=repo.type, revision=commit, cache_dir=hub_cache(),
                                   endpoint=endpoint(), token=token())
            paths.append(Path(path))
    return paths


def not_cached(repo: Repo, missing: list[str] | None, why: str) -> LmforgeError:
    lacks = "nothing of it" if not missing or missing == ["everything"] else "no " + ", ".join(missing)
    return LmforgeError(f"{why}, and the cache holds {lacks} for the {repo.label} (searched {repo.folder}); "
                        f"connect to the network and run `lmforge download {repo.id}`, or point HF_HUB_CACHE (or "
                        "HF_HOME) to a cache that holds it")


@contextlib.contextmanager
def hub_errors(repo: Repo, missing: list[str] | None = None) -> Iterator[None]:
    """Turn huggingface_hub's and the network's exceptions into one sentence that names the fix."""
    import httpx2
    from huggingface_hub import errors

    login = "log in with `hf auth login` or set HF_TOKEN"
    try:
        yield
    except errors.GatedRepoError:
        if token():
            raise LmforgeError(f"the {repo.label} is gated and your token has no access to it yet; request access "
                               f"at {repo.url}") from None
        raise LmforgeError(f"the {repo.label} is gated: accept its conditions at {repo.url}, then {login}") from None
    except errors.RepositoryNotFoundError:
        where = "is neither a local path nor a repository on" if repo.type == "model" else "is not a data set on"
        hint = "or your token cannot see it" if token() else f"or it is private: {login}"
        raise LmforgeError(f"{repo.id} {where} {endpoint()} ({hint}); check the name") from None
    except errors.RevisionNotFoundError:
        raise LmforgeError(f"the {repo.type} repository {repo.id} has no revision {repo.revision!r}; give a branch, "
                           f"tag or commit it has (e.g. {repo.id}@main)") from None
    except errors.RemoteEntryNotFoundError as exc:
        filename = str(exc.response.url).split("/resolve/", 1)[-1].split("/", 1)[-1]
        raise LmforgeError(f"the {repo.label} has no file {unquote(filename)}; the repository changed or is "
                           "incomplete") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled):
        raise not_cached(repo, missing, "offline mode is on (HF_HUB_OFFLINE)") from None
    except httpx2.TransportError as exc:
        if isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout)):
            raise not_cached(repo, missing, f"could not reach {endpoint()} ({exc or type(exc).__name__})") from None
        raise LmforgeError(f"the download of the {repo.label} from {endpoint()} was cut off ({exc or type(exc).__name__}) "
                           "and could not be resumed; run the command again (nothing half-written was kept)") from None
    except errors.FileMetadataError:
        raise LmforgeError(f"{endpoint()} does not answer like a Hugging Face Hub; check HF_ENDPOINT") from None
    except errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "an error"
        raise LmforgeError(f"{endpoint()} answered {status} for the {repo.label}; try again later") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise LmforgeError(f"the disk is full while downloading the {repo.label} into {hub_cache()}; free some "
                               "space or point HF_HUB_CACHE to a larger disk (nothing half-written was kept)") from None
        if "Consistency check failed" in str(exc):
            raise LmforgeError(f"the download of the {repo.label} was cut off before the end; run the command again "
                               "(nothing half-written was kept)") from None
        raise
