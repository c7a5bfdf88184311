"""docs/lecture.md runs: every command block, in order, against the fake Hub that holds tiny random models and
small data sets under the lecture's names (tests/hub_repos.py). Training runs are shortened; a block marked
`<!-- needs: ... -->` waits for a feature that is not built yet and is skipped with that reason."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from fake_hub import shared_hub
from lmforge.cli.main import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "lecture.md"
FAST = {"--max_iters": "2", "--eval_interval": "1", "--eval_iters": "1", "--gen_interval": "2",
        "--gen_examples": "2", "--limit": "3", "--warmup_iters": "1"}
NEEDS = {"quantization": "the quantization issue (8-bit base)"}


def blocks() -> list[tuple[str, str, list[str]]]:
    """(id, the block's text, the features it needs) of every ```bash block."""
    text = DOC.read_text(encoding="utf-8")
    out, section = [], "intro"
    for m in re.finditer(r"^## ([^\n]+)$|(<!-- needs: ([\w, ]+) -->\n)?```bash\n(.*?)```", text, re.M | re.S):
        if m.group(1):
            section = re.sub(r"\W+", "-", m.group(1).lower()).strip("-")[:40]
            continue
        needs = [n.strip() for n in m.group(3).split(",")] if m.group(3) else []
        out.append((f"{len(out) + 1}-{section}", m.group(4), needs))
    return out


def commands(block: str) -> list[tuple[str, str | list[str]]]:
    """('file', path, text) for a here-document, ('lmforge', argv) for a command; nothing else is allowed."""
    lines, out = block.splitlines(), []
    while lines:
        line = lines.pop(0)
        while line.endswith("\\"):
            line = line[:-1] + " " + lines.pop(0).strip()
        heredoc = re.fullmatch(r"cat > (\S+) <<'EOF'", line.strip())
        if heredoc:
            end = lines.index("EOF")
            out.append(("file", heredoc.group(1), "\n".join(lines[:end]) + "\n"))
            lines = lines[end + 1:]
        elif line.strip():
            argv = shlex.split(line)
            assert argv[0] == "lmforge", f"docs/lecture.md may only run lmforge commands and here-documents: {line}"
            out.append(("lmforge", argv[1:]))
    return out


def shortened(argv: list[str]) -> list[str]:
    return [FAST.get(argv[i - 1], a) if i else a for i, a in enumerate(argv)]


@pytest.fixture(scope="module")
def lecture_dir(hub_models, tmp_path_factory):
    from hub_repos import publish

    hub = shared_hub()
    hub.reset()
    publish(hub, hub_models)
    work = tmp_path_factory.mktemp("lecture")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny models' steps are microseconds of work; more threads only wait on each other
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(work / ".hf-cache"))
        mp.delenv("LMFORGE_DATA", raising=False)
        mp.chdir(work)
        yield work
    torch.set_num_threads(threads)
    hub.reset()


@pytest.mark.parametrize("name, block, needs", blocks(), ids=[b[0] for b in blocks()])
def test_lecture_block_runs(lecture_dir, name, block, needs, capsys):
    if needs:
        pytest.skip("needs " + " and ".join(NEEDS[n] for n in needs))
    for command in commands(block):
        if command[0] == "file":
            Path(command[1]).write_text(command[2], encoding="utf-8")
            continue
        argv = shortened(command[1])
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 0, f"lmforge {' '.join(argv)} exited {code}: {err}"


def test_the_doc_has_the_lecture_names_and_marks_exactly_the_missing_features():
    text = DOC.read_text(encoding="utf-8")
    for name in ("gpt2", "facebook/bart-large-cnn", "sdadas/flan-t5-base-translator-en-pl", "facebook/opt-125m",
                 "Abirate/english_quotes", "knkarthick/samsum"):
        assert name in text
    marked = [(name, needs) for name, _, needs in blocks() if needs]
    assert [needs for _, needs in marked] == [["quantization"]]
    for _, block, needs in blocks():
        assert ("--load_in_8bit" in block) == bool(needs)
