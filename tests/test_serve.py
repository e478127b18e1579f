"""`backdoorlab serve` on a real loopback socket, driven by the official openai client and by
raw HTTP: hostile bodies, OpenAI's own refusals, concurrency, long prompts, keys, seeds."""

import concurrent.futures
import http.client
import json
import time
import urllib.parse

import openai
import pytest
from conftest import cli_main

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
    assert status == 501 and "error" in reply
    status, reply = _raw(server, "POST", "/v1/chat/completions", b"x" * 10,
                         {"Content-Length": str(10**9)})  # fmt: skip
    assert status == 413


def test_what_openai_refuses_we_refuse(client):
    for bad in ({"temperature": -0.5}, {"n": 0}, {"max_tokens": 0}, {"top_logprobs": 30},
                {"stream": True}, {"messages": []}):  # fmt: skip
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
