"""Chat templates: a model's Jinja template turns a list of messages into the prompt text, as transformers'
`apply_chat_template` renders it.

The template is `chat_template.jinja` in the model folder, else `chat_template` in tokenizer_config.json (a
string, or a list of named templates of which "default" is used). It renders in Jinja's immutable sandbox with
`trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, transformers' `tojson` (no HTML escaping,
`indent`/`separators`/`sort_keys`), and the globals `raise_exception`, `strftime_now`, `dict` and `namespace`;
its variables are `messages`, `add_generation_prompt`, `tools`, `documents` and the tokenizer's special tokens
(`bos_token`, `eos_token`, ... as strings). The rendered text is tokenized without adding special tokens (the
template writes them).

A model without a template gets DEFAULT_TEMPLATE: one `role: content` line per message and `assistant:` to
prompt the answer; generation then also stops at a new line that starts another turn (DEFAULT_STOPS).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmforge.errors import LmforgeError

DEFAULT_TEMPLATE = ("{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
                    "{% if add_generation_prompt %}assistant:{% endif %}")
DEFAULT_STOPS = ["\nuser:", "\nsystem:", "\nassistant:"]
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class TemplateError(LmforgeError):
    """The template refused the conversation (raise_exception) or could not be rendered."""


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace without underscore attributes (no way into Python's internals)."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        values = dict(*args, **kwargs)
        for name in values:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, values)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=dict, namespace=_Namespace)
    return env


class ChatTemplate:
    """A compiled chat template with the special tokens it sees; `is_default` when the model had none."""

    def __init__(self, source: str | None, special_tokens: dict[str, str] | None = None):
        self.is_default = source is None
        self.source = DEFAULT_TEMPLATE if source is None else source
        self.special_tokens = dict(special_tokens or {})
        try:
            self.template = _environment().from_string(self.source)
        except jinja2.exceptions.TemplateSyntaxError as exc:
            raise LmforgeError(f"the model's chat template is not valid Jinja (line {exc.lineno}: {exc.message}); "
                               "fix chat_template in tokenizer_config.json or chat_template.jinja") from None

    @classmethod
    def from_folder(cls, folder: str | Path | None, tokenizer=None) -> ChatTemplate:
        """The template of a model folder (None or a folder without one: the default template)."""
        config = {}
        source = None
        if folder is not None:
            folder = Path(folder)
            if (folder / "tokenizer_config.json").is_file():
                config = _read_json(folder / "tokenizer_config.json")
            if (folder / "chat_template.jinja").is_file():
                source = (folder / "chat_template.jinja").read_text(encoding="utf-8")
            else:
                source = _named_template(config.get("chat_template"), folder)
        return cls(source, special_tokens(config, tokenizer))

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **variables) -> str:
        """The prompt text of a conversation."""
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        **{"tools": None, "documents": None, **self.special_tokens, **variables})
        except jinja2.exceptions.TemplateError as exc:
            raise TemplateError(f"the chat template refused the conversation: {exc}") from None


def _named_template(value, folder: Path) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if "default" in named:
            return named["default"]
    raise LmforgeError(f"chat_template in {folder / 'tokenizer_config.json'} is neither a string nor a list of "
                       "named templates with a 'default' one; fix it")


def special_tokens(config: dict, tokenizer=None) -> dict[str, str]:
    """The special tokens a template sees, as strings: from tokenizer_config.json, else the tokenizer's roles."""
    tokens = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if value is None and tokenizer is not None:
            value = getattr(tokenizer, key, None)
        if isinstance(value, str):
            tokens[key] = value
    extra = config.get("additional_special_tokens") or config.get("extra_special_tokens")
    if isinstance(extra, list):
        tokens["additional_special_tokens"] = [t.get("content") if isinstance(t, dict) else t for t in extra]
    return tokens


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LmforgeError(f"{path} is not valid JSON ({exc}); fix or re-save it") from None
    return data if isinstance(data, dict) else {}
