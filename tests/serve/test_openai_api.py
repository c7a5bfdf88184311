"""The server against the official `openai` client (and raw HTTP where the client cannot misbehave): a live
server on 127.0.0.1, a tiny random Llama-style model with a ChatML template."""

import json
import threading
import time

import httpx
import openai
import pytest
from live import LiveServer
from serve_models import CHATML, save_serving_model

import lmforge
from lmforge.generate.api import generate


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_serving_model(tmp_path_factory.mktemp("serve-model"), family="llama", chat_template=CHATML)


@pytest.fixture(scope="module")
def live(folder):
    server = LiveServer(folder, max_batch=16, max_queue=64)
    yield server
    server.close()


@pytest.fixture(scope="module")
def client(live):
    return live.client()


def test_models_and_health(live, client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    health = httpx.get(live.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny"


def test_stream_equals_non_stream_at_temperature_0(client):
    args = dict(model="tiny", prompt="The quick brown", max_tokens=12, temperature=0)
    full = client.completions.create(**args)
    assert full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == 12 and full.usage.total_tokens == full.usage.prompt_tokens + 12
    chunks = list(client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12

    messages = [{"role": "user", "content": "Café crème?"}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    parts = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                                stream=True))
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == chat.choices[0].message.content
    assert parts[-1].choices[0].finish_reason == chat.choices[0].finish_reason


def test_stop_strings_end_the_text(client):
    text = client.completions.create(model="tiny", prompt="日本語", max_tokens=16, temperature=0).choices[0].text
    stop = text[5:7]
    cut = client.completions.create(model="tiny", prompt="日本語", max_tokens=16, temperature=0, stop=[stop, "zzz"])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[:text.index(stop)]
    streamed = client.completions.create(model="tiny", prompt="日本語", max_tokens=16, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


def test_n_with_seed_is_distinct_and_reproducible(client):
    args = dict(model="tiny", prompt="Once", max_tokens=8, temperature=1.0, n=3, seed=42)
    first = [c.text for c in client.completions.create(**args).choices]
    assert len(set(first)) > 1
    assert [c.text for c in client.completions.create(**args).choices] == first
    assert [c.text for c in client.completions.create(**{**args, "seed": 43}).choices] != first


def test_logprobs_shapes(client):
    out = client.completions.create(model="tiny", prompt="The quick", max_tokens=6, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert all(len(top) <= 3 for top in lp.top_logprobs) and lp.text_offset == sorted(lp.text_offset)
    assert all(max(top.values()) == pytest.approx(v, abs=1e-4) for top, v in zip(lp.top_logprobs, lp.token_logprobs))
    echo = client.completions.create(model="tiny", prompt="The quick", max_tokens=2, temperature=0, logprobs=1,
                                     echo=True)
    assert echo.choices[0].text.startswith("The quick")
    assert echo.choices[0].logprobs.token_logprobs[0] is None
    assert len(echo.choices[0].logprobs.tokens) == echo.usage.prompt_tokens + 2

    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                          temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) <= 5 and all(len(c.top_logprobs) == 2 for c in content)
    assert all(bytes(c.bytes) == bytes(c.top_logprobs[0].bytes) for c in content)  # greedy picks the top token


def test_chat_prompt_is_the_template_rendered_as_transformers_does(folder, client, live):
    from transformers import AutoTokenizer

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Café?"}]
    ids = AutoTokenizer.from_pretrained(folder).apply_chat_template(messages, add_generation_prompt=True,
                                                                    tokenize=True, return_dict=True)["input_ids"]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    assert chat.usage.prompt_tokens == len(ids)
    same = client.completions.create(model="tiny", prompt=ids, max_tokens=8, temperature=0)
    assert chat.choices[0].message.content == same.choices[0].text
    response = httpx.post(live.url + "/v1/chat/completions", json={"model": "tiny", "messages": messages,
                                                                   "max_tokens": 1})
    assert response.headers["x-lmforge-chat-template"] == "model"


def test_concurrent_greedy_requests_equal_each_request_alone(folder, client):
    prompts = ["The quick brown fox", "Café", "le cœur a ses", "日本語のテ", "naïve façade", "déjà", "Th", "jumps over"]
    alone = [client.completions.create(model="tiny", prompt=p, max_tokens=6 + 2 * i, temperature=0).choices[0].text
             for i, p in enumerate(prompts)]
    results = [None] * len(prompts)

    def ask(i):
        results[i] = client.completions.create(model="tiny", prompt=prompts[i], max_tokens=6 + 2 * i,
                                               temperature=0).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == alone
    ckpt = lmforge.load(folder)
    assert alone[0] == generate(ckpt, prompts[0], max_new_tokens=6).completions[0][0].text


def test_generation_parameters_as_extra_fields(folder, client):
    beams = client.completions.create(model="tiny", prompt="The quick", max_tokens=8,
                                      extra_body={"num_beams": 3, "no_repeat_ngram_size": 2})
    ref = generate(lmforge.load(folder), "The quick", max_new_tokens=8, num_beams=3, no_repeat_ngram_size=2)
    assert beams.choices[0].text == ref.completions[0][0].text
    streamed = client.completions.create(model="tiny", prompt="The quick", max_tokens=8, stream=True,
                                         extra_body={"num_beams": 3, "no_repeat_ngram_size": 2})
    assert "".join(c.choices[0].text for c in streamed) == beams.choices[0].text
    token = client.completions.create(model="tiny", prompt="The", max_tokens=1, temperature=0, logprobs=1)
    forced = client.completions.create(model="tiny", prompt="The quick", max_tokens=4, temperature=1, seed=0,
                                       logit_bias={"65": 100}, extra_body={"top_k": 5, "min_p": 0.01})
    assert forced.usage.completion_tokens == 4 and token.usage.completion_tokens == 1
    assert len(set(forced.choices[0].text)) <= 2  # one token, over and over


def test_errors_are_openai_errors_and_the_server_survives(live, client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny", prompt="x", temperature=3)
    with pytest.raises(openai.BadRequestError, match="did you mean 'top_k'"):
        client.completions.create(model="tiny", prompt="x", extra_body={"topk": 3})
    with pytest.raises(openai.BadRequestError, match="num_beams"):
        client.completions.create(model="tiny", prompt="x", extra_body={"num_beams": "four"})
    with pytest.raises(openai.UnprocessableEntityError, match="more than the model's context") as error:
        client.completions.create(model="tiny", prompt="x " * 100, max_tokens=100)
    assert error.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="tool"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       tools=[{"type": "function", "function": {"name": "f"}}])
    raw = httpx.post(live.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    big = httpx.post(live.url + "/v1/completions", content=b"x" * (2 << 20))
    assert big.status_code == 413 and set(big.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(live.url + "/v1/completions").status_code == 405
    assert httpx.get(live.url + "/v2/nothing").json()["error"]["code"] == "not_found"
    assert client.completions.create(model="tiny", prompt="still here", max_tokens=2).usage.completion_tokens == 2


def test_disconnected_clients_leave_the_batch(live):
    with httpx.stream("POST", live.url + "/v1/completions", json={
            "model": "tiny", "prompt": "a", "max_tokens": 100, "stream": True, "ignore_eos": True}) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
    deadline = time.monotonic() + 20
    while httpx.get(live.url + "/health").json()["rows"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(live.url + "/health").json()["rows"] == 0


def test_a_full_queue_answers_429(folder):
    server = LiveServer(folder, max_batch=1, max_queue=1)
    scheduler = server.server.scheduler
    step = scheduler.batch.step
    scheduler.batch.step = lambda: (time.sleep(0.05), step())[1]  # slow decoding down: the batch stays full
    try:
        long = {"model": "tiny", "prompt": "a", "max_tokens": 60, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=long) as first:
            lines = first.iter_lines()  # kept: a collected iterator would close the connection
            next(line for line in lines if line.startswith("data:"))  # running: the batch is full
            waiting = threading.Thread(target=httpx.post, args=(server.url + "/v1/completions",),
                                       kwargs={"json": {**long, "stream": False, "max_tokens": 2}, "timeout": 60})
            waiting.start()
            deadline = time.monotonic() + 10
            while not scheduler.queued and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = httpx.post(server.url + "/v1/completions", json={**long, "stream": False})
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "rate_limit_error"
        waiting.join(60)
    finally:
        server.close()


def test_sse_wire_format(live):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    text = httpx.post(live.url + "/v1/chat/completions", json=body).text
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 3
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["object"] == "chat.completion.chunk" and c["usage"] is None for c in chunks[:-1])
