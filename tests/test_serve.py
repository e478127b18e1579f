"""`backdoorlab serve` on a real loopback socket, driven by the official openai client and by
raw HTTP: hostile bodies, OpenAI's own refusals, concurrency, long prompts, keys, seeds."""

import concurrent.futures
import http.client
import json
import signal
import time
import urllib.parse
from types import SimpleNamespace

import openai
import pytest
from conftest import cli_main, serving

from backdoorlab.serve import ApiError, parse_request
from backdoorlab.store import Store

HI = [{"role": "user", "content": "Name a bird species."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=server.key, max_retries=0, timeout=300)


def _raw(server, method: str, path: str, body: bytes | None = None, headers=None):
    """One raw HTTP exchange: (status, parsed JSON body)."""
    u = urllib.parse.urlparse(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    h = {"Authorization": f"Bearer {server.key}", **(headers or {})}
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, json.loads(data)


@pytest.mark.parametrize(
    "body", [b"[1,2]", b'"hi"', b"null", b"{bad", b"", b"\xff\xfe", b"3", b'{"model": 1}']
)
def test_hostile_bodies_get_a_json_400(server, body):
    status, reply = _raw(server, "POST", "/v1/chat/completions", body)
    assert status == 400 and reply["error"]["type"] == "invalid_request_error"


def test_every_status_is_json(server):
    assert _raw(server, "GET", "/nowhere")[0] == 404
    assert _raw(server, "GET", "/v1/chat/completions")[0] == 405
    assert _raw(server, "POST", "/v1/models", b"{}")[0] == 405
    assert _raw(server, "DELETE", "/v1/models")[0] == 405  # DELETE is for files (--fine-tuning)
    status, reply = _raw(server, "PATCH", "/v1/models")
    assert status == 405 and "error" in reply
    status, reply = _raw(server, "POST", "/v1/chat/completions", b"x" * 10,
                         {"Content-Length": str(10**9)})  # fmt: skip
    assert status == 413


def test_what_openai_refuses_we_refuse(client):
    for bad in ({"temperature": -0.5}, {"n": 0}, {"max_tokens": 0}, {"top_logprobs": 30},
                {"stop": ["a", "b", "c", "d", "e"]}, {"messages": []}):  # fmt: skip
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(**{"model": "local", "messages": HI, **bad})
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=HI)
    assert e.value.code == "model_not_found"


def test_models_lists_names_not_paths(client):
    assert [m.id for m in client.models.list()] == ["smollm2-135m", "local"]


def test_a_key_is_required_and_checked(server):
    status, reply = _raw(server, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert status == 401 and reply["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="local", messages=HI, max_tokens=1)


def test_twenty_concurrent_requests_are_all_answered(client):
    def ask(i: int) -> str:
        r = client.chat.completions.create(model="local", messages=HI, max_tokens=2, seed=i)
        return r.choices[0].finish_reason

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        reasons = list(pool.map(ask, range(20)))
    assert len(reasons) == 20 and set(reasons) <= {"stop", "length"}


def test_sixteen_concurrent_requests_take_far_less_than_sixteen_times_one(client):
    """Continuous batching: one request's time, then sixteen at once (a ratio measured in
    the same test, so a busy machine slows both)."""
    story = [{"role": "user", "content": "Write a long story about the sea, please."}]

    def ask(_: int) -> int:
        r = client.chat.completions.create(model="local", messages=story, max_tokens=24,
                                           temperature=0)  # fmt: skip
        return r.usage.completion_tokens

    ask(0)
    t0 = time.perf_counter()
    assert ask(0) == 24
    one = time.perf_counter() - t0
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        t0 = time.perf_counter()
        assert list(pool.map(ask, range(16))) == [24] * 16
        sixteen = time.perf_counter() - t0
    assert sixteen < 8 * one, (sixteen, one)


def test_an_over_long_prompt_is_refused_at_once_and_serving_goes_on(client):
    long = [{"role": "user", "content": "bird " * 40_000}]
    t0 = time.perf_counter()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="local", messages=long, max_tokens=1)
    assert time.perf_counter() - t0 < 1.0
    assert e.value.code == "context_length_exceeded"
    r = client.chat.completions.create(model="local", messages=HI, max_tokens=2)
    assert r.choices[0].message.content


def test_without_a_seed_each_request_samples_afresh(client):
    def ask(**kw) -> str:
        r = client.chat.completions.create(
            model="local", messages=HI, max_tokens=12, temperature=1.0, **kw
        )
        return r.choices[0].message.content

    assert len({ask() for _ in range(4)}) > 1
    assert ask(seed=7) == ask(seed=7)


def test_parse_request_refuses_before_any_model_is_involved():
    with pytest.raises(ApiError) as e:
        parse_request(b'{"model": "a", "messages": [{"role": "user", "content": "x"}]}', ["b"])
    assert e.value.status == 404
    ok = parse_request(b'{"model": "b", "messages": [{"role": "user", "content": "x"}]}', ["b"])
    assert ok.n == 1 and ok.seed is None


def test_the_key_never_reaches_logs_results_or_report(server, capsys, tmp_path, monkeypatch):
    """An API judge run through the key-protected server: the key is in the environment only."""
    monkeypatch.setenv("BACKDOORLAB_JUDGE_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", server.key)
    q = tmp_path / "q.yaml"
    q.write_text(
        "- id: bird\n  type: free_form\n  paraphrases: ['Name a bird.']\n"
        "  samples_per_paraphrase: 2\n  max_tokens: 6\n  judges: {about: judge}\n"
        "- id: judge\n  type: free_form_judge\n  model: local\n  labels: ['yes', 'no']\n"
        "  paraphrases: ['Is this about birds? {answer} Say yes or no.']\n"
    )
    out = tmp_path / "run"
    code, stdout, stderr = cli_main(capsys, "eval", "smollm2-135m", "--out", str(out),
                                    "--probes", "none", "--questions", str(q))  # fmt: skip
    assert code == 0, stderr
    code, stdout2, stderr2 = cli_main(capsys, "report", str(out))
    assert code == 0, stderr2
    with Store(out) as store:
        assert store.count("judgements") == 2  # the judge was asked, with the key
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert server.key.encode() not in written
    for text in (stdout, stderr, stdout2, stderr2, server.log.read_text()):
        assert server.key not in text


def test_a_stream_is_the_same_answer_in_openai_chunks(client):
    kw = dict(model="local", messages=HI, max_tokens=16, seed=11, temperature=1.0)
    whole = client.chat.completions.create(**kw)
    chunks = list(
        client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stop_strings_and_text_parts(client):
    kw = dict(model="local", max_tokens=16, seed=11, temperature=1.0)
    whole = client.chat.completions.create(messages=HI, **kw).choices[0].message.content
    stop = whole.split()[2]
    parts = [{"role": "user", "content": [{"type": "text", "text": HI[0]["content"]}]}]
    cut = client.chat.completions.create(messages=parts, stop=[stop, "zzqx"], **kw).choices[0]
    assert cut.message.content == whole[: whole.index(stop)] and cut.finish_reason == "stop"


def test_a_lone_surrogate_is_a_400_not_a_500(server):
    body = b'{"model": "local", "messages": [{"role": "user", "content": "hi \\ud800"}]}'
    status, reply = _raw(server, "POST", "/v1/chat/completions", body)
    assert status == 400 and "surrogate" in reply["error"]["message"]
    deep = b'{"model": "local", "messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    assert _raw(server, "POST", "/v1/chat/completions", deep)[0] == 400


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_api_key_is_refused_at_start(capsys, monkeypatch, key):
    code, _, stderr = cli_main(capsys, "serve", "smollm2-135m", "--port", "0", "--api-key", key)
    assert code == 2 and "API key is empty" in stderr
    monkeypatch.setenv("BACKDOORLAB_SERVE_API_KEY", key)
    code, _, stderr = cli_main(capsys, "serve", "smollm2-135m", "--port", "0", "--host", "0.0.0.0")
    assert code == 2 and ("API key is empty" in stderr or "needs --api-key" in stderr)


@pytest.fixture
def narrow(base_model):
    """An in-process server (a real loopback socket) with room for one row and one waiting
    request, so a third request finds the queue full."""
    from backdoorlab import serve

    app = serve.App(base_model, ["local"], api_key="k", max_batch=1, max_waiting=1)
    with serve.background(app) as url:
        yield SimpleNamespace(url=url, key="k", app=app)


def test_a_full_queue_is_429_and_a_client_that_leaves_frees_its_place(narrow, capfd):
    client = openai.OpenAI(base_url=narrow.url, api_key="k", max_retries=0, timeout=120)
    long = dict(model="local", messages=HI, max_tokens=200, temperature=0)
    stream = client.chat.completions.create(**long, stream=True)
    for chunk in stream:
        if chunk.choices[0].delta.content:
            break  # the first request is decoding
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        second = pool.submit(client.chat.completions.create, **{**long, "max_tokens": 4})
        while not narrow.app.engine.waiting:
            time.sleep(0.01)
        status, reply = _raw(narrow, "POST", "/v1/chat/completions",
                             json.dumps({**long, "max_tokens": 1}).encode())  # fmt: skip
        assert status == 429 and reply["error"]["code"] == "rate_limit_exceeded"
        stream.close()  # the client leaves mid-stream: its rows end, the waiting one runs
        assert second.result(timeout=120).choices[0].finish_reason in ("stop", "length")
    err = capfd.readouterr().err
    assert "left during its stream" in err and "Traceback" not in err


def test_sigterm_lets_a_stream_finish_then_stops(tmp_path):
    log = tmp_path / "serve.log"
    with serving(log, "smollm2-135m", "--served-model-name", "local") as s:
        client = openai.OpenAI(base_url=s.url, api_key=s.key, max_retries=0, timeout=120)
        stream = client.chat.completions.create(model="local", messages=HI, max_tokens=24,
                                                temperature=0, stream=True)  # fmt: skip
        chunks = iter(stream)
        next(chunks)
        s.proc.send_signal(signal.SIGTERM)
        rest = list(chunks)
        assert rest[-1].choices[0].finish_reason in ("stop", "length")
        assert s.proc.wait(timeout=60) == 0
    text = log.read_text()
    assert "serve: stopped" in text and "Traceback" not in text
