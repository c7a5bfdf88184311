"""The public data sets lmforge knows by name, and where their files come from.

A named data set's files are read from `$LMFORGE_DATA/<name>/` when that folder exists (it is then the
authority: a file it holds back, like a test split kept for independent measurement, stays missing).
Otherwise each file is fetched once from its public source into `$LMFORGE_CACHE/data/<name>/` (default
~/.cache/lmforge/data) and kept only when it matches the checksum of what was published:

    PublicFile   a file at a URL (gunzipped after the check when published as .gz)
    HubCopy      a split of a Hub data set, reduced to the fields lmforge reads and written as JSON Lines;
                 the checksum is that of this JSON Lines file, so a changed copy on the Hub is refused

The preference sets (hh-rlhf-*) are registered here with their sources and checksums; data/preferences.py
reads them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_path

READ_BYTES = 1 << 20


@dataclass(frozen=True)
class PublicFile:
    url: str
    sha256: str  # of the bytes as published
    gunzip: bool = False


@dataclass(frozen=True)
class HubCopy:
    repo: str  # a Hub data set id
    split: str
    fields: tuple[str, ...]
    sha256: str  # of the JSON Lines file written from it


_CHAR_RNN = "https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data"
_MULTI30K = "https://raw.githubusercontent.com/multi30k/dataset/a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/raw"
_HH_COMMIT = "354e5c3cb8960630860dd5774a6ac2a58313bf4d"
_HH_LFS = f"https://media.githubusercontent.com/media/anthropics/hh-rlhf/{_HH_COMMIT}"  # Git LFS objects
_HH_RAW = f"https://raw.githubusercontent.com/anthropics/hh-rlhf/{_HH_COMMIT}"
_SAMSUM = ("id", "dialogue", "summary")


def _multi30k(name: str, source: str, sha_en: str, sha_de: str) -> dict[str, PublicFile]:
    return {f"{name}.en": PublicFile(f"{_MULTI30K}/{source}.en.gz", sha_en, gunzip=True),
            f"{name}.de": PublicFile(f"{_MULTI30K}/{source}.de.gz", sha_de, gunzip=True)}


def _hh(folder: str, **splits: str) -> dict[str, PublicFile]:
    base = _HH_RAW if folder == "harmless-base" else _HH_LFS
    return {f"{split}.jsonl": PublicFile(f"{base}/{folder}/{split}.jsonl.gz", sha, gunzip=True)
            for split, sha in splits.items()}


# name -> local file name -> source. Checksums: the sha256 of each file as published (for Git LFS files, the
# oid of its pointer at the pinned commit); see ../shared/data/*/README.md for the copies they were checked on.
PUBLIC: dict[str, dict[str, PublicFile | HubCopy]] = {
    "tinyshakespeare": {"input.txt": PublicFile(
        f"{_CHAR_RNN}/tinyshakespeare/input.txt", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")},
    "samsum": {
        # knkarthick/samsum: SAMSum with CRLF turned into LF and without the one empty dialogue of train
        "train.jsonl": HubCopy("knkarthick/samsum", "train", _SAMSUM,
                               "7b3f815874859593b86b48038f95c546136fe747db189a4486d5e2c90aa91218"),
        "validation.jsonl": HubCopy("knkarthick/samsum", "validation", _SAMSUM,
                                    "42602d72d5e44ec65cb7b93271635dcc8d18754c1f606cec9ec48f7fdb478edc"),
    },
    "multi30k": {
        **_multi30k("train", "train", "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
                    "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6"),
        **_multi30k("val", "val", "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
                    "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a"),
        **_multi30k("test2016", "test_2016_flickr", "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
                    "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8"),
        **_multi30k("test2017", "test_2017_flickr", "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
                    "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee"),
        **_multi30k("test2018", "test_2018_flickr", "ef4f4844037d4c5dea75c9a8ed5fd78905967a26f67c255e230cc9780032654d",
                    "ddd0130c7d97482dc5197a02141dae8dd79f20f03586c480d675c09a32daf608"),
    },
    "hh-rlhf-helpful-base": _hh(
        "helpful-base", train="518a5bf288456fc9f3b7c980c54116fba0c52f274d3f4d344675d83e4058f6f4",
        test="8be3fc1a13b27901631696f2be6f184c799f1baeaf145f53ac5db24960adc37b"),
    "hh-rlhf-helpful-online": _hh(
        "helpful-online", train="0994d18b82083f5c084ce04071b683958a724df8c7215ab1d851986642d36a2a",
        test="39a475cc7e0df972902f8e3a0972726fce826ac65369bda8c671de4330c60a10"),
    "hh-rlhf-helpful-rejection-sampled": _hh(
        "helpful-rejection-sampled", train="0cea2d2ab2187624ec1314e8cc6fb579f0fa987b3a33e8102b7556ed4d255f64",
        test="abc35dbc56015db1dae0faa484514ccbc3eee0133bfcd557fc69250619b028bb"),
    "hh-rlhf-harmless-base": _hh(
        "harmless-base", test="ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge")) / "data"


def data_root(name: str) -> Path | None:
    """`$LMFORGE_DATA/<name>` when it exists."""
    root = os.environ.get("LMFORGE_DATA")
    return Path(root) / name if root and (Path(root) / name).is_dir() else None


def named_file(name: str, filename: str) -> Path:
    """The local path of a file of a named data set: under $LMFORGE_DATA (which may hold it back), in the cache,
    or fetched now from its public source and checked."""
    root = data_root(name)
    if root is not None:
        return root / filename
    cached = cache_dir() / name / filename
    if cached.is_file():
        return cached
    source = PUBLIC.get(name, {}).get(filename)
    where = (f"$LMFORGE_DATA has no {name}/ folder" if os.environ.get("LMFORGE_DATA")
             else "$LMFORGE_DATA is not set")
    if source is None:
        raise LmforgeError(f"{name}/{filename} is not in the cache and has no verified public source ({where}); "
                           f"put it in $LMFORGE_DATA/{name}/")
    from lmforge.hub import remote

    if remote.is_offline():
        raise LmforgeError(f"{name}/{filename} is needed but offline mode is on, {where} and the cache "
                           f"({cache_dir() / name}) does not hold it; set LMFORGE_DATA to a folder with {name}/")
    try:
        if isinstance(source, HubCopy):
            return _from_hub(source, cached, f"{name}/{filename}")
        return download(source.url, cached, source.sha256, what=f"{name}/{filename}", gunzip=source.gunzip)
    except LmforgeError as exc:
        raise LmforgeError(f"{name}/{filename}: {where}, and fetching its public copy failed: {exc}") from None


def download(url: str, dest: Path, sha256: str | None = None, what: str = "the file", timeout: float = 60,
             gunzip: bool = False) -> Path:
    """Fetch `url` to `dest` atomically, checking the sha256 of the published bytes and gunzipping after."""
    digest = hashlib.sha256()
    try:
        with atomic_path(dest) as tmp:
            raw = tmp.with_name(tmp.name + ".gz") if gunzip else tmp
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response, open(raw, "wb") as out:
                    while chunk := response.read(READ_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
                if sha256 and digest.hexdigest() != sha256:
                    raise LmforgeError(f"the download of {what} from {url} has sha256 {digest.hexdigest()}, "
                                       f"expected {sha256}; the file changed or was corrupted, so it was not kept")
                if gunzip:
                    with gzip.open(raw, "rb") as packed, open(tmp, "wb") as out:
                        shutil.copyfileobj(packed, out, READ_BYTES)
            finally:
                if gunzip:
                    raw.unlink(missing_ok=True)
    except (urllib.error.URLError, OSError) as exc:
        if isinstance(exc, LmforgeError):
            raise
        reason = getattr(exc, "reason", exc)
        raise LmforgeError(f"could not download {what} from {url} ({reason}); when offline, set LMFORGE_DATA "
                           f"to a folder that holds {what}") from None
    return dest


def hub_copy_lines(records, fields: tuple[str, ...]) -> list[str]:
    """The JSON Lines of a Hub copy: each record reduced to `fields` (LF line ends, stripped), records with an
    empty field left out."""
    lines = []
    for _, record in records:
        reduced = {f: str(record.get(f) or "").replace("\r\n", "\n").replace("\r", "\n").strip() for f in fields}
        if all(reduced.values()):
            lines.append(json.dumps(reduced, ensure_ascii=False) + "\n")
    return lines


def _from_hub(source: HubCopy, dest: Path, what: str) -> Path:
    from lmforge.data.hub import resolve_dataset
    from lmforge.data.records import iter_records

    split = resolve_dataset(f"{source.repo}:{source.split}")
    lines = [line for path in split.files for line in hub_copy_lines(iter_records(path), source.fields)]
    data = "".join(lines).encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    if digest != source.sha256:
        raise LmforgeError(f"the records of {split.description} have sha256 {digest}, expected {source.sha256}; "
                           "the copy on the Hub changed, so it was not kept")
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return dest
