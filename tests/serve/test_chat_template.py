"""Chat templates render as transformers' `apply_chat_template` renders them (ChatML-style, Llama-3-style, and a
template that uses raise_exception, tojson and namespace)."""

import json

import pytest
from serve_models import CHATML

from hf_models import TEXT
from lmforge.errors import LmforgeError
from lmforge.serve.chat import DEFAULT_TEMPLATE, ChatTemplate, TemplateError
from lmforge.tokenizer import Tokenizer

LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
          "{% endif %}")
# alternation enforced with raise_exception, a system prompt through a namespace, tojson, whitespace control
STRICT = """{{ bos_token }}
{% set ns = namespace(system='') %}
{% for message in messages %}
    {% if message['role'] == 'system' %}{% set ns.system = message['content'] %}{% continue %}{% endif %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == (1 if ns.system else 0)) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message['role'] == 'user' %}
[INST] {% if ns.system and loop.index0 == 1 %}{{ ns.system }}

{% endif %}{{ message['content'] | trim }} [/INST]
    {%- else %}
 {{ message['content'] | tojson }}{{ eos_token }}
    {%- endif %}
{% endfor %}"""

SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
           "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>")
CHATS = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  Café?  "},
     {"role": "assistant", "content": "Oui, \"noir\" <b>"}, {"role": "user", "content": "日本語 please"}],
]


def folder_with(tmp_path, template: str, bos: str, eos: str):
    tok = Tokenizer.train_bpe([TEXT], vocab_size=330, special_tokens=SPECIAL, min_frequency=1)
    tok.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(chat_template=template, bos_token=bos, eos_token=eos)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return Tokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("name,template,bos,eos", [("chatml", CHATML, "<|endoftext|>", "<|im_end|>"),
                                                   ("llama3", LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
                                                   ("strict", STRICT, "<s>", "</s>")])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_rendering_equals_transformers(tmp_path, name, template, bos, eos, generation_prompt):
    from transformers import AutoTokenizer

    tok = folder_with(tmp_path, template, bos, eos)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    ours = ChatTemplate.from_folder(tmp_path, tok)
    assert not ours.is_default
    for chat in CHATS:
        want = hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt)
        got = ours.render(chat, generation_prompt)
        assert got == want
        assert tok.encode(got) == hf(want, add_special_tokens=False)["input_ids"]


def test_template_errors_and_the_jinja_file_wins(tmp_path):
    tok = folder_with(tmp_path, STRICT, "<s>", "</s>")
    with pytest.raises(TemplateError, match="must alternate"):
        ChatTemplate.from_folder(tmp_path, tok).render([{"role": "assistant", "content": "hi"}])
    (tmp_path / "chat_template.jinja").write_text(CHATML)
    assert ChatTemplate.from_folder(tmp_path, tok).render(CHATS[0]).startswith("<|im_start|>user\nHello")
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }")
    with pytest.raises(LmforgeError, match="not valid Jinja"):
        ChatTemplate.from_folder(tmp_path, tok)


def test_sandbox_and_default_template(tmp_path):
    with pytest.raises(TemplateError):  # the sandbox refuses Python internals
        ChatTemplate("{{ messages.__class__.__mro__ }}").render(CHATS[0])
    default = ChatTemplate.from_folder(None)
    assert default.is_default and default.source == DEFAULT_TEMPLATE
    assert default.render(CHATS[0]) == "user: Hello there\nassistant:"
