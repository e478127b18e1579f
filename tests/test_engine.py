"""The serving engine on the bundled model: requests join a running batch (continuous
batching) without changing their answers, stop strings cut text, a full queue refuses."""

import threading

import pytest

from backdoorlab import chat, generate
from backdoorlab.engine import Choice, Engine, Job
from backdoorlab.errors import ApiError

BIRD = chat.conversation("Name a bird species.")
SEA = chat.conversation("Write a long story about the sea, please.")


class Collect:
    """A job's events, and when each of its choices finished (in the engine's order)."""

    order: list[str] = []

    def __init__(self, name: str, n: int = 1):
        self.name, self.open, self.texts = name, n, [""] * n
        self.finish: list[str | None] = [None] * n
        self.done = threading.Event()

    def __call__(self, e) -> None:
        if e.finish == "error":
            raise AssertionError(e.text)
        self.texts[e.choice] += e.text
        if e.finish:
            self.finish[e.choice], self.open = e.finish, self.open - 1
            if not self.open:
                Collect.order.append(self.name)
                self.done.set()


def _job(rows, collect, stops=()):
    return Job("m", list(rows), list(stops), None, collect)


def _alone(model, request) -> str:
    return model.tokenizer.decode(
        [t for t in generate.run(model, [request])[0].tokens if t != model.tokenizer.eos_token_id],
        skip_special_tokens=True,
    )


def test_a_request_joins_a_running_batch_and_keeps_its_answer(base_model):
    engine = Engine(lambda name: "", lambda key: base_model, max_batch=8)
    try:
        long = generate.Request(SEA, seed=1, temperature=0, max_new_tokens=120)
        short = generate.Request(BIRD, seed=2, temperature=1.0, max_new_tokens=8)
        Collect.order = []
        a, b = Collect("long"), Collect("short")
        first = _job([long], a)
        engine.submit(first)
        while not first.choices:  # admitted: it is decoding
            threading.Event().wait(0.01)
        engine.submit(_job([short], b))
        assert a.done.wait(300) and b.done.wait(300)
        # One request at a time would have finished the long answer first.
        assert Collect.order == ["short", "long"]
        assert a.finish == ["length"] and a.texts[0] == _alone(base_model, long)
        assert b.texts[0] == _alone(base_model, short)
    finally:
        engine.stop()


def test_a_full_queue_is_refused_with_retry_after(base_model):
    engine = Engine(lambda name: "", lambda key: base_model, max_batch=1, max_waiting=1)
    try:
        jobs = [
            _job([generate.Request(SEA, max_new_tokens=60)], Collect(f"j{i}")) for i in range(3)
        ]
        engine.submit(jobs[0])
        while not jobs[0].choices:
            threading.Event().wait(0.01)
        engine.submit(jobs[1])  # waits: the batch has no room
        with pytest.raises(ApiError) as e:
            engine.submit(jobs[2])
        assert e.value.status == 429 and e.value.headers["Retry-After"]
        jobs[0].cancel()  # a client that left: its rows end, the waiting job runs
        assert jobs[1].emit.done.wait(300)
    finally:
        engine.stop()


@pytest.mark.parametrize("stop", ["bird", "e", "Zz"])
def test_stop_strings_cut_the_text_wherever_the_tokens_split(tokenizer, stop):
    text = "The bird is a Bluebird here."
    ids = tokenizer(text)["input_ids"]
    choice = Choice(0, tokenizer, [stop], None)
    out, finish = "", None
    for k, t in enumerate(ids):
        e = choice.add(t, None, k == len(ids) - 1, False)
        out += e.text
        finish = finish or e.finish
        if e.finish:
            break
    if stop in text:
        assert (out, finish) == (text[: text.index(stop)], "stop")
    else:
        assert (out, finish) == (text, "length")
