"""`lmforge serve` as a process: it prints where it listens, serves, and on SIGTERM lets an in-flight request finish
before it exits (by the signal, as uvicorn does); bad input ends with one sentence and exit status 2."""

import json
import os
import signal
import socket
import subprocess
import sys

import httpx
import pytest
from serve_models import save_serving_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_serving_model(tmp_path_factory.mktemp("cli-serve-model"))


def lmforge(*argv, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "lmforge.cli.main", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kwargs)


def test_sigterm_finishes_the_request_in_flight(folder):
    from lmforge.tokenizer import Tokenizer

    encode = Tokenizer.from_pretrained(folder).encode
    server = lmforge("serve", str(folder), "--port", "0", "--model-name", "demo", "--shutdown-timeout", "60")
    try:
        line = server.stdout.readline()
        assert line.startswith("serving demo at http://127.0.0.1:"), line + server.stderr.read()
        url = line.split()[3]
        chat = httpx.post(url + "/v1/chat/completions", timeout=120, json={
            "model": "demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0})
        assert chat.headers["x-lmforge-chat-template"] == "default"  # the model has none
        assert chat.json()["usage"]["prompt_tokens"] == len(encode("user: Hi\nassistant:"))
        body = {"model": "demo", "prompt": "The", "max_tokens": 40, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            server.send_signal(signal.SIGTERM)
            rest = list(lines)
        chunks = [json.loads(line[6:]) for line in [first, *rest] if line.startswith("data: {")]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length" and "data: [DONE]" in rest
        assert server.wait(60) == -signal.SIGTERM  # uvicorn re-raises the signal once it has shut down
        assert "Traceback" not in server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()


@pytest.mark.parametrize("argv,words", [(["serve", "no/such/folder"], "no/such/folder"),
                                        (["serve", "{folder}", "--max-batch", "0"], "--max-batch must be at least 1"),
                                        (["serve", "{folder}", "--port", "{port}"], "choose another --port")])
def test_bad_input_exits_2_with_one_sentence(folder, capsys, argv, words):
    from lmforge.cli.main import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        code = main([a.format(folder=folder, port=taken.getsockname()[1]) for a in argv])
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err
