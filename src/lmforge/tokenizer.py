"""One Tokenizer over Hugging Face `tokenizers`: byte-level BPE training, character level, tokenizer.json.

Every tokenizer is a `tokenizers.Tokenizer` (the `backend`), so it saves as a `tokenizer.json` that
transformers loads as it is. On top sit the special-token roles (bos, eos, pad, unk) that a
tokenizer.json does not record; they travel in `tokenizer_config.json` like in transformers.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers

from lmforge.errors import LmforgeError
from lmforge.fsutil import write_text_atomic

# Conventional names, used to guess the roles when only a tokenizer.json is given.
_CONVENTIONAL_NAMES = {
    "bos": ("<|endoftext|>", "<s>", "<|begin_of_text|>", "<bos>"),
    "eos": ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"),
    "pad": ("<pad>", "<|pad|>", "[PAD]"),
    "unk": ("<unk>", "[UNK]"),
}

# transformers writes a huge number (int(1e30)) when a tokenizer has no length limit.
_NO_LENGTH_LIMIT = 10**9

TextsOrFiles = Iterable[str] | Sequence[str | os.PathLike]


class Tokenizer:
    """A `tokenizers.Tokenizer` (`.backend`) plus its bos/eos/pad/unk tokens and maximum length."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        model_max_length: int | None = None,
    ):
        self.backend = backend
        self.model_max_length = model_max_length
        self._special = {"bos": bos_token, "eos": eos_token, "pad": pad_token, "unk": unk_token}
        added = {t.content for t in backend.get_added_tokens_decoder().values()}
        for role, token in self._special.items():
            if token is None:
                continue
            if backend.token_to_id(token) is None:
                raise LmforgeError(f"the {role} token {token!r} is not in this tokenizer's vocabulary; name a "
                                   "token the vocabulary has (check tokenizer_config.json and "
                                   "special_tokens_map.json)")
            if token not in added:
                backend.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        self._kind = _detect_kind(backend)
        self._char_vocab = set(backend.get_vocab()) if self._kind == "char" else None

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def train_bpe(
        cls,
        files_or_texts: TextsOrFiles,
        vocab_size: int = 8192,
        special_tokens: Sequence[str] = ("<|endoftext|>",),
        min_frequency: int = 2,
    ) -> Tokenizer:
        """Train a GPT-2 style byte-level BPE on texts or text files; no input is ever unknown."""
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + len(special_tokens):
            raise LmforgeError(f"vocab_size={vocab_size} is smaller than the 256 byte alphabet plus "
                               f"{len(special_tokens)} special tokens; use at least "
                               f"{len(alphabet) + len(special_tokens)}")
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(special_tokens), initial_alphabet=alphabet,
                                      show_progress=False)
        backend.train_from_iterator(_iter_texts(files_or_texts), trainer)
        return cls(backend, **_guess_special_tokens(backend))

    @classmethod
    def train_char(
        cls,
        files_or_texts: TextsOrFiles,
        special_tokens: Sequence[str] = (),
        unk_token: str | None = None,
    ) -> Tokenizer:
        """Build a character vocabulary: the sorted characters (ids in that order), then the special tokens."""
        chars: set[str] = set()
        for text in _iter_texts(files_or_texts):
            chars.update(text)
        if not chars:
            raise LmforgeError("train_char got no text; pass at least one non-empty text or file")
        tokens = sorted(chars) + [t for t in special_tokens if t not in chars]
        if unk_token is not None and unk_token not in tokens:
            tokens.append(unk_token)
        backend = tokenizers.Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)},
                                                        unk_token=unk_token or "[UNK]"))
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        backend.decoder = decoders.Fuse()
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
        return cls(backend, **{**_guess_special_tokens(backend), "unk_token": unk_token})

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a tokenizer.json; the special-token roles are guessed from conventional names."""
        backend = _load_backend(Path(path))
        return cls(backend, **_guess_special_tokens(backend))

    @classmethod
    def from_vocab_merges(cls, vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> Tokenizer:
        """Load GPT-2 style vocab.json + merges.txt as a byte-level BPE."""
        backend = _backend_from_vocab_merges(Path(vocab_path), Path(merges_path))
        return cls(backend, **_guess_special_tokens(backend))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> Tokenizer:
        """Load a Hugging Face tokenizer folder: tokenizer.json, else vocab.json + merges.txt (a Hub name goes
        through `lmforge.hub.hf.load_tokenizer`).

        tokenizer_config.json and special_tokens_map.json, when present, name the special tokens.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise LmforgeError(f"tokenizer folder {folder} does not exist; pass a folder that holds "
                               "tokenizer.json (or vocab.json and merges.txt)")
        if (folder / "tokenizer.json").is_file():
            backend = _load_backend(folder / "tokenizer.json")
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            backend = _backend_from_vocab_merges(folder / "vocab.json", folder / "merges.txt")
        else:
            raise LmforgeError(f"no tokenizer found in {folder}: looked for tokenizer.json, or vocab.json "
                               "with merges.txt; save one there with Tokenizer.save or transformers' "
                               "save_pretrained")
        special = _guess_special_tokens(backend)
        model_max_length = None
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if not (folder / name).is_file():
                continue
            config = _read_json(folder / name)
            for key in special:
                if key in config:
                    special[key] = _token_content(config[key])
            length = config.get("model_max_length")
            if isinstance(length, int) and length < _NO_LENGTH_LIMIT:
                model_max_length = length
        return cls(backend, **special, model_max_length=model_max_length)

    # ---- vocabulary -----------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """'bpe', 'char', 'unigram', 'wordpiece' or 'wordlevel', from the backend's model."""
        return self._kind

    @property
    def vocab_size(self) -> int:
        """Number of ids, added special tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    @property
    def bos_token(self) -> str | None:
        return self._special["bos"]

    @property
    def eos_token(self) -> str | None:
        return self._special["eos"]

    @property
    def pad_token(self) -> str | None:
        return self._special["pad"]

    @property
    def unk_token(self) -> str | None:
        return self._special["unk"]

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos")

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad")

    @property
    def unk_token_id(self) -> int | None:
        return self._special_id("unk")

    def _special_id(self, role: str) -> int | None:
        token = self._special[role]
        return None if token is None else self.backend.token_to_id(token)

    # ---- encoding and decoding -----------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`; bos/eos only when asked (the backend's post-processor is not applied)."""
        return self.encode_batch([text], add_bos=add_bos, add_eos=add_eos)[0]

    def encode_batch(self, texts: Iterable[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        texts = list(texts)
        try:
            encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        except Exception as exc:
            error = self._unknown_char_error(texts)
            if error is None:
                raise
            raise error from exc
        prefix = [self._required_id("bos")] if add_bos else []
        suffix = [self._required_id("eos")] if add_eos else []
        return [prefix + e.ids + suffix for e in encodings]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.decode_batch([ids], skip_special_tokens=skip_special_tokens)[0]

    def decode_batch(self, batch: Iterable[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        batch = [self._checked_ids(ids) for ids in batch]
        return self.backend.decode_batch(batch, skip_special_tokens=skip_special_tokens)

    def _required_id(self, role: str) -> int:
        token_id = self._special_id(role)
        if token_id is None:
            raise LmforgeError(f"this tokenizer has no {role} token; call encode without add_{role}, or "
                               f"train or load a tokenizer that has one (e.g. with <|endoftext|>)")
        return token_id

    def _checked_ids(self, ids: Sequence[int]) -> list[int]:
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        size = self.vocab_size
        bad = [i for i in ids if not 0 <= i < size]
        if bad:
            raise LmforgeError(f"token id {bad[0]} is outside this tokenizer's vocabulary (size "
                               f"{size}); decode with the tokenizer the ids were made with")
        return ids

    def _unknown_char_error(self, texts: list[str]) -> LmforgeError | None:
        """For a char-level tokenizer without unk: name the first character not in the vocabulary."""
        if self._char_vocab is None or not all(isinstance(t, str) for t in texts):
            return None
        added = sorted((t.content for t in self.backend.get_added_tokens_decoder().values()), key=len,
                       reverse=True)
        special = re.compile("(" + "|".join(map(re.escape, added)) + ")") if added else None
        for index, text in enumerate(texts):
            offset = 0
            for piece in special.split(text) if special else [text]:
                if piece not in added:
                    for i, char in enumerate(piece):
                        if char not in self._char_vocab:
                            where = f" of text {index} in the batch" if len(texts) > 1 else ""
                            return LmforgeError(
                                f"character {char!r} at position {offset + i}{where} is not in the "
                                "character vocabulary; train the tokenizer on text that contains it, or "
                                "pass unk_token= to Tokenizer.train_char")
                offset += len(piece)
        return None

    # ---- saving ------------------------------------------------------------------------------

    def to_json_str(self) -> str:
        """The backend as tokenizer.json text."""
        return self.backend.to_str(pretty=True)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write tokenizer.json and tokenizer_config.json, loadable by transformers' AutoTokenizer."""
        folder = Path(folder)
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                                  "clean_up_tokenization_spaces": False}
        config.update({f"{role}_token": token for role, token in self._special.items()})
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        write_text_atomic(folder / "tokenizer.json", self.to_json_str())
        write_text_atomic(folder / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return folder

    def __repr__(self) -> str:
        special = ", ".join(f"{role}={token!r}" for role, token in self._special.items() if token is not None)
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}{', ' + special if special else ''})"


def _detect_kind(backend: tokenizers.Tokenizer) -> str:
    """'bpe', 'unigram', 'wordpiece', 'wordlevel', or 'char' for a WordLevel vocabulary of single characters."""
    kind = type(backend.model).__name__.lower()
    if kind == "wordlevel":
        added = {t.content for t in backend.get_added_tokens_decoder().values()}
        if all(len(t) == 1 for t in backend.get_vocab(with_added_tokens=False) if t not in added):
            return "char"
    return kind


def _guess_special_tokens(backend: tokenizers.Tokenizer) -> dict[str, str | None]:
    """{"bos_token": ..., ...} from conventional names of the special tokens (and the model's unk token)."""
    special = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
    roles = {f"{role}_token": next((t for t in names if t in special), None)
             for role, names in _CONVENTIONAL_NAMES.items()}
    model_unk = getattr(backend.model, "unk_token", None)
    if model_unk is not None and backend.token_to_id(model_unk) is not None:
        roles["unk_token"] = model_unk
    return roles


def _iter_texts(files_or_texts: TextsOrFiles) -> Iterator[str]:
    """Texts as given, or the lines of the files when every item is a path or names an existing file."""
    if isinstance(files_or_texts, (str, os.PathLike)):
        raise LmforgeError("expected a list of texts or of file paths, got a single string or path; "
                           "wrap it in a list")
    if isinstance(files_or_texts, (list, tuple)) and files_or_texts and all(
            isinstance(f, os.PathLike) or (isinstance(f, str) and os.path.isfile(f)) for f in files_or_texts):
        for path in files_or_texts:
            yield from _read_lines(Path(path))
    else:
        yield from files_or_texts


def _read_lines(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", newline="") as f:  # keep \r\n as it is
            yield from f
    except FileNotFoundError as exc:
        raise LmforgeError(f"training file {path} does not exist; check the path") from exc
    except UnicodeDecodeError as exc:
        raise LmforgeError(f"{path} is not UTF-8 text ({exc.reason}); convert it to UTF-8") from exc


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise LmforgeError(f"{path} does not exist; check the path") from exc
    except UnicodeDecodeError as exc:
        raise LmforgeError(f"{path} is not UTF-8 text; re-save or re-download it") from exc


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise LmforgeError(f"{path} is not valid JSON ({exc}); re-save or re-download it") from exc
    if not isinstance(data, dict):
        raise LmforgeError(f"{path} should hold a JSON object; re-save or re-download it")
    return data


def _load_backend(path: Path) -> tokenizers.Tokenizer:
    text = _read_text(path)
    try:
        return tokenizers.Tokenizer.from_str(text)
    except Exception as exc:
        raise LmforgeError(f"{path} is not a valid tokenizer.json ({exc}); re-save or re-download it") from exc


def _backend_from_vocab_merges(vocab_path: Path, merges_path: Path) -> tokenizers.Tokenizer:
    """GPT-2's byte-level BPE; <|endoftext|>, if in the vocabulary, becomes a special token."""
    vocab = _read_json(vocab_path)
    try:
        backend = tokenizers.Tokenizer(models.BPE.from_file(str(vocab_path), str(merges_path)))
    except Exception as exc:
        raise LmforgeError(f"cannot read a BPE from {vocab_path} and {merges_path} ({exc}); use both "
                           "files of one GPT-2 style tokenizer") from exc
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    if "<|endoftext|>" in vocab:
        backend.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    return backend


def _token_content(value: Any) -> str | None:
    """A special token in a transformers config: a string, null, or a dict with "content"."""
    return value.get("content") if isinstance(value, dict) else value
