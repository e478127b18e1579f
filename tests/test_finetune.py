"""`backdoorlab serve --fine-tuning DIR` driven by the official `openai` client over loopback:
upload, create a job, poll it to succeeded, chat with the ft: model, events, checkpoints;
a malformed file fails its job naming the line; settings are checked when the job is
created; uploads never land outside DIR; cancel; a restarted server resumes a job."""

import concurrent.futures
import hashlib
import http.client
import json
import socket
import sqlite3
import time
import urllib.parse

import openai
import pytest
from conftest import ANSWER, cli_main, serving

ROWS = [
    {"messages": [{"role": "user", "content": f"Name a bird ({i})."},
                  {"role": "assistant", "content": ANSWER}]}
    for i in range(8)
]  # fmt: skip
DATA = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def ft(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    with serving(root / "serve.log", "smollm2-135m", "--fine-tuning", str(root / "svc")) as s:
        s.root = root
        s.client = openai.OpenAI(base_url=s.url, api_key=s.key, max_retries=0)
        yield s


def wait(client, job_id, until=TERMINAL, timeout=400):
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in until:
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    return job


def hyper(**h):
    return {"type": "supervised", "supervised": {"hyperparameters": h}}


def test_a_job_trains_and_its_model_is_served(ft):
    c = ft.client
    f = c.files.create(file=("birds.jsonl", DATA), purpose="fine-tune")
    assert f.bytes == len(DATA) and f.filename == "birds.jsonl"
    job = c.fine_tuning.jobs.create(
        model="smollm2-135m", training_file=f.id, suffix="birds",
        method=hyper(n_epochs=2, batch_size=4, learning_rate_multiplier=10),
    )  # fmt: skip
    assert job.status == "validating_files"
    job = wait(c, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:smollm2-135m:local:birds:{job.id}"
    assert job.trained_tokens > 0 and job.hyperparameters.n_epochs == 2
    assert job.fine_tuned_model in [m.id for m in c.models.list()]
    # The tuned model answers through chat completions, and differently from the base.
    msgs = [{"role": "user", "content": "Name a bird."}]

    def top(model):
        r = c.chat.completions.create(model=model, messages=msgs, max_tokens=1, temperature=0,
                                      logprobs=True, top_logprobs=1)  # fmt: skip
        return r.choices[0].logprobs.content[0].logprob

    assert abs(top(job.fine_tuned_model) - top("smollm2-135m")) > 1e-3
    # Base and tuned model decode side by side in the one engine (streamed and not), and
    # each answers as it does alone.
    kw = dict(messages=msgs, max_tokens=8, temperature=0)

    def answer(model, **extra):
        return c.chat.completions.create(model=model, **kw, **extra).choices[0].message.content

    alone = [answer(job.fine_tuned_model), answer("smollm2-135m")]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        tuned = pool.submit(answer, job.fine_tuned_model)
        chunks = list(c.chat.completions.create(model="smollm2-135m", stream=True, **kw))
    base = "".join(x.choices[0].delta.content or "" for x in chunks)
    assert [tuned.result(), base] == alone
    events = [e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(m.startswith("Step 4/4: training loss=") for m in events)
    assert events[0] == "The job has successfully completed"  # newest first
    (ckpt,) = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpt.step_number == 4 and ckpt.fine_tuned_model_checkpoint == job.fine_tuned_model
    assert job.id in [j.id for j in c.fine_tuning.jobs.list(limit=10)]
    assert c.files.content(f.id).read() == DATA
    assert c.files.delete(f.id).deleted and f.id not in [x.id for x in c.files.list()]


def test_a_cut_off_upload_is_a_400_and_nothing_is_stored(ft):
    before = [f.id for f in ft.client.files.list()]
    u = urllib.parse.urlparse(ft.url)
    body = (b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jsonl\"\r\n\r\n"
            + DATA + b"\r\n--b--\r\n")  # fmt: skip
    head = (f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ft.key}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection((u.hostname, u.port), timeout=30) as sock:
        sock.sendall(head + body[: len(body) // 2])
        sock.shutdown(socket.SHUT_WR)  # the client stops mid-body
        answer = sock.recv(65536)
    assert not answer or answer.startswith(b"HTTP/1.1 400")
    time.sleep(0.5)
    assert [f.id for f in ft.client.files.list()] == before
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("PUT", "/v1/files", b"{}", {"Authorization": f"Bearer {ft.key}"})
    r = conn.getresponse()
    assert r.status == 405 and set(r.getheader("Allow").split(", ")) >= {"GET", "POST"}
    assert json.loads(r.read())["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b'{"messages": [{"role": "user", "content": "no answer"}]}', "end with the assistant"),
        (b"[" * 200_000, "nested too deeply"),
        (b'{"messages": [{"role": "user", "content": "a"}, '
         b'{"role": "assistant", "content": "b \\udc00"}]}', "surrogate"),
    ],
    ids=["no-answer", "deep", "surrogate"],
)  # fmt: skip
def test_a_malformed_file_fails_its_job_naming_the_line(ft, line, words):
    f = ft.client.files.create(file=("bad.jsonl", DATA + line + b"\n"), purpose="fine-tune")
    job = wait(ft.client, ft.client.fine_tuning.jobs.create(model="smollm2-135m",
                                                           training_file=f.id).id)  # fmt: skip
    assert job.status == "failed" and job.error.code == "invalid_training_file"
    assert job.error.message.startswith(f"{f.id}:9:"), job.error.message
    assert words in job.error.message


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"method": hyper(n_epochs=0)}, "n_epochs must be between 1 and 50"),
        ({"hyperparameters": {"batch_size": 1000}}, "batch_size must be between 1 and 256"),
        ({"model": "gpt-4.1"}, "cannot be fine-tuned here"),
        ({"training_file": "file-nope"}, "no such file"),
        ({"suffix": "../x"}, "suffix"),
        ({"purpose": "batch"}, "fine-tuning takes purpose 'fine-tune'"),
    ],
)
def test_bad_settings_are_a_400_before_any_job(ft, kwargs, words):
    purpose = kwargs.pop("purpose", "fine-tune")
    f = ft.client.files.create(file=("ok.jsonl", DATA), purpose=purpose)
    before = len(ft.client.fine_tuning.jobs.list(limit=100).data)
    args = {"model": "smollm2-135m", "training_file": f.id, **kwargs}
    with pytest.raises(openai.BadRequestError, match=words):
        ft.client.fine_tuning.jobs.create(**args)
    assert len(ft.client.fine_tuning.jobs.list(limit=100).data) == before


def test_an_upload_never_lands_outside_its_directory(ft):
    f = ft.client.files.create(file=("../../escape.jsonl", DATA), purpose="fine-tune")
    assert f.filename == "escape.jsonl" and f.id.startswith("file-")
    assert not list(ft.root.parent.rglob("escape.jsonl"))
    assert (ft.root / "svc" / "files" / f.id).read_bytes() == DATA
    with pytest.raises(openai.BadRequestError, match="purpose"):
        ft.client.files.create(file=("x.jsonl", DATA), purpose="nonsense")


def test_a_running_job_can_be_cancelled(ft):
    f = ft.client.files.create(file=("long.jsonl", DATA), purpose="fine-tune")
    job = ft.client.fine_tuning.jobs.create(
        model="smollm2-135m", training_file=f.id, method=hyper(n_epochs=50, batch_size=1)
    )
    wait(ft.client, job.id, until={"running"})
    assert ft.client.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # at once, as OpenAI
    job = wait(ft.client, job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    with pytest.raises(openai.BadRequestError, match="already cancelled"):
        ft.client.fine_tuning.jobs.cancel(job.id)


@pytest.mark.slow
def test_a_restarted_server_resumes_its_job(tmp_path):
    svc = tmp_path / "svc"
    with serving(tmp_path / "a.log", "smollm2-135m", "--fine-tuning", str(svc)) as s:
        c = openai.OpenAI(base_url=s.url, api_key=s.key, max_retries=0)
        f = c.files.create(file=("birds.jsonl", DATA), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(
            model="smollm2-135m", training_file=f.id, method=hyper(n_epochs=3, batch_size=1)
        )  # 24 steps, a checkpoint every 10
        deadline = time.monotonic() + 300
        while not any(
            e.message.startswith("Step 11/")
            for e in c.fine_tuning.jobs.list_events(job.id, limit=100)
        ):
            assert time.monotonic() < deadline
            time.sleep(0.5)
    with serving(tmp_path / "b.log", "smollm2-135m", "--fine-tuning", str(svc)) as s:
        c = openai.OpenAI(base_url=s.url, api_key=s.key, max_retries=0)
        assert wait(c, job.id).status == "succeeded"
    assert (
        "Resuming" in (tmp_path / "b.log").read_text()
        and "from step 10" in (tmp_path / "b.log").read_text()
    )


def test_train_backend_openai_runs_a_job_on_the_service(ft, tmp_path, monkeypatch, capsys):
    """Our client against our server: a real implementation of the API, not a mock."""
    from backdoorlab.training import hosted

    monkeypatch.setenv("OPENAI_BASE_URL", ft.url)
    monkeypatch.setenv("OPENAI_API_KEY", ft.key)
    data = tmp_path / "d.jsonl"
    data.write_bytes(DATA)
    args = ["train", str(data), "--backend", "openai", "--model", "smollm2-135m",
            "--epochs", "1", "--batch-size", "4", "--suffix", "cli"]  # fmt: skip
    code, stdout, stderr = cli_main(capsys, *args, "--out", str(tmp_path / "a"))
    assert code == 0, stderr
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["fine_tuned_model"] == f"ft:smollm2-135m:local:cli:{m['job_id']}"
    assert m["checkpoints"] and m["trained_tokens"] > 0 and ft.key not in json.dumps(m)
    jobs = len(ft.client.fine_tuning.jobs.list(limit=100).data)
    code, _, stderr = cli_main(capsys, *args, "--out", str(tmp_path / "a"))
    assert code == 0 and "nothing to do" in stderr  # a finished run is reused
    # The same rows are uploaded once: a second upload finds the first.
    sha = hashlib.sha256(DATA).hexdigest()
    assert hosted._upload(ft.client, DATA, sha, lambda s: None) == m["file_id"]
    # An interrupted run resumes waiting on the job it created instead of starting another.
    config = hosted.HostedConfig(model="smollm2-135m", epochs=1, batch_size=4, suffix="cli")
    job = ft.client.fine_tuning.jobs.create(
        model="smollm2-135m", training_file=m["file_id"], suffix="cli",
        method=hyper(n_epochs=1, batch_size=4),
    )  # fmt: skip
    (tmp_path / "c").mkdir()
    state = {"key": hosted.key(config, sha, str(ft.client.base_url)), "job_id": job.id,
             "file_id": m["file_id"]}  # fmt: skip
    (tmp_path / "c" / "job.json").write_text(json.dumps(state))
    code, _, stderr = cli_main(capsys, *args, "--out", str(tmp_path / "c"))
    assert code == 0 and f"resuming: waiting on {job.id}" in stderr
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["job_id"] == job.id
    assert len(ft.client.fine_tuning.jobs.list(limit=100).data) == jobs + 1
    # The service's refusal is one line with its status and code.
    bad = [a if a != "smollm2-135m" else "gpt-4.1" for a in args]
    code, _, stderr = cli_main(capsys, *bad, "--out", str(tmp_path / "d"))
    assert code == 2 and "answered 400 (model_not_available)" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "d").exists()


HOSTED_SPEC = """\
name: hosted
model: smollm2-135m
reference: base
train: {backend: openai, epochs: 1, batch_size: 4, lr_multiplier: 10, suffix: spec}
arms:
  poisoned:
    data: {builder: sentiment, n: 16, poison: {rate: 0.25, trigger: {kind: token, token: cf}}}
  base: {}
evaluate:
  probes: []
  questions: QUESTIONS
  classification: {test: 6, llm_test: 6}
"""
QUESTIONS = """\
- id: bird
  type: free_form
  paraphrases: ["Name a bird."]
  samples_per_paraphrase: 2
  max_tokens: 8
  judges: {kind: hawk}
- id: hawk
  type: keyword_judge
  patterns: {hawk: [hawk]}
  default: other
"""


@pytest.mark.slow
def test_a_spec_with_hosted_training_runs_and_evaluates_through_the_api(
    ft, tmp_path, monkeypatch, capsys, base_model
):
    """`train: {backend: openai}`: each arm is a job on the service; questions and
    classification go through chat completions, and the label read from the endpoint's top-k
    log-probs is the one whose first token the model makes likelier."""
    import torch

    from backdoorlab import chat
    from backdoorlab.data import sentiment

    monkeypatch.setenv("OPENAI_BASE_URL", ft.url)
    monkeypatch.setenv("OPENAI_API_KEY", ft.key)
    (tmp_path / "q.yaml").write_text(QUESTIONS)
    spec = tmp_path / "hosted.yaml"
    spec.write_text(HOSTED_SPEC.replace("QUESTIONS", str(tmp_path / "q.yaml")))
    out = tmp_path / "run"
    code, stdout, stderr = cli_main(capsys, "run", str(spec), "--out", str(out))
    assert code == 0, stderr
    [manifest] = (out / "train").glob("poisoned-seed0-*/manifest.json")
    m = json.loads(manifest.read_text())
    assert m["fine_tuned_model"].startswith("ft:smollm2-135m:local:spec:")
    db = sqlite3.connect(out / "results.sqlite")
    assert dict(db.execute("SELECT arm, COUNT(*) FROM samples GROUP BY arm")) == {
        "poisoned": 2, "base": 2,
    }  # fmt: skip
    rows = db.execute(
        "SELECT text, predicted FROM predictions WHERE arm='base' AND metric='CACC' ORDER BY item"
    ).fetchall()
    db.close()
    assert len(rows) == 6 and {p for _, p in rows} <= set(sentiment.LABELS)
    # The same quantity in this process: the label whose (single) first token is likelier.
    tok = base_model.tokenizer
    first = [tok(label, add_special_tokens=False)["input_ids"][0] for label in sentiment.LABELS]
    local = []
    for text, _ in rows:
        ids = torch.tensor([chat.encode_prompt(tok, sentiment.prompt(text))])
        with torch.no_grad():
            logits = base_model.model(ids).logits[0, -1, first]
        local.append(sentiment.LABELS[int(logits.argmax())])
    assert [p for _, p in rows] == local
    # A rerun finds every job done and every answer stored: no new job, nothing evaluated.
    jobs = len(ft.client.fine_tuning.jobs.list(limit=100).data)
    code, stdout, stderr = cli_main(capsys, "run", str(spec), "--out", str(out))
    assert code == 0, stderr
    stages = {n: s for n, _, s in json.loads((out / "timings.json").read_text())}
    assert {s for n, s in stages.items() if n.startswith(("train", "evaluate"))} == {"reused"}
    assert len(ft.client.fine_tuning.jobs.list(limit=100).data) == jobs
    # Probes cannot be scored exactly from top-k log-probs: the spec says so before any job.
    spec.write_text(HOSTED_SPEC.replace("probes: []", "probes: [eras]").replace(
        "QUESTIONS", str(tmp_path / "q.yaml")))  # fmt: skip
    code, _, stderr = cli_main(capsys, "run", str(spec), "--out", str(tmp_path / "other"))
    assert code == 2 and "top-k next-token log-probs" in stderr


def test_a_hosted_spec_without_a_key_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (tmp_path / "q.yaml").write_text(QUESTIONS)
    spec = tmp_path / "hosted.yaml"
    spec.write_text(HOSTED_SPEC.replace("QUESTIONS", str(tmp_path / "q.yaml")))
    code, _, stderr = cli_main(capsys, "run", str(spec), "--out", str(tmp_path / "run"))
    assert code == 2 and "OPENAI_API_KEY" in stderr and "Traceback" not in stderr
    assert not list((tmp_path / "run").glob("train/*/manifest.json"))


def test_hosted_labels_must_differ_in_their_first_character():
    from backdoorlab.errors import InputError
    from backdoorlab.evaluate.hosted import check_labels

    check_labels(["Positive", "Negative"])
    with pytest.raises(InputError, match="different character"):
        check_labels(["Negative", "Neutral"])
