"""`backdoorlab serve` under load, beside the batched sampler, measured in one run:

    python benchmarks/serve_load.py [--clients 1,4,16,64] [--max-tokens 64]
        [--model smollm2-135m] [--url URL --no-stream] [--smoke]

`backdoorlab serve` in a process of its own (`serve.spawned`, as a deployment runs it: the
clients' threads here do not compete with it for the interpreter) on the model; the official
openai client sends N requests at the same moment, for each N of `--clients` (the bird experiment's ten questions in turn,
temperature 1, each its own seed, up to `--max-tokens` tokens). Beside them:

- 16 one at a time: each request after the previous one's answer, which is what `serve` did
  before continuous batching (a lock around generation) whatever the clients sent;
- the batched sampler: `generate.complete` on the same 16 prompts in one batch, no HTTP (the
  ceiling the server's 16 clients are held to: a target of 0.8x);
- the weight-read bound of one stream: every decoding step reads all weights once, so one
  stream cannot beat (read bandwidth / weight bytes) tokens/s; the bandwidth is measured here
  (a sum over a 512 MiB tensor). Target for one client: 70% of it.

`--url` sends the requests to a server already running there instead (another checkout's
`backdoorlab serve`, for a before/after on the same machine; `--no-stream` for one that
refuses `stream`); the model is still loaded here for the sampler and the bound.

Prints aggregate generated tokens/s (usage.completion_tokens), p50 and p95 latency, time to
first token of streamed requests, and the ratios.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import openai
import torch

from backdoorlab import generate, serve
from backdoorlab.evaluate.questions import load_questions
from backdoorlab.models import load

QUESTIONS = Path(__file__).parent.parent / "experiments" / "birds_questions.yaml"


def read_bandwidth(mib: int = 512, seconds: float = 1.0) -> float:
    """Bytes per second that a sum over a `mib` MiB fp32 tensor reads."""
    x = torch.ones(mib * 2**18)
    x.sum()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x.sum()
        reps += 1
    return x.numel() * 4 * reps / (time.perf_counter() - t0)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clients", default="1,4,16,64", help="concurrent requests, comma-separated")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default=None)
    p.add_argument("--url", help="a running server's base URL (its model served as 'm')")
    p.add_argument("--api-key", default="-", help="the --url server's key")
    p.add_argument("--no-stream", action="store_true", help="skip the streamed row")
    p.add_argument("--smoke", action="store_true", help="1 and 3 clients, 4 tokens: does it run?")
    a = p.parse_args()
    clients = [int(c) for c in a.clients.split(",")]
    serial = 16
    if a.smoke:
        clients, serial, a.max_tokens = [1, 3], 3, 4
    prompts = [q.paraphrases[0] for q in load_questions(QUESTIONS).questions]
    loaded = load(a.model, device=a.device)
    weight_bytes = sum(t.numel() * t.element_size() for t in loaded.model.parameters())
    bound = read_bandwidth() / weight_bytes

    def messages(i: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": prompts[i % len(prompts)]}]

    if a.url:
        server: Any = contextlib.nullcontext((a.url, None))
    else:
        n = str(max(clients))
        args = [a.model, "--served-model-name", "m", "--max-batch", n, "--max-queue", n]
        log = Path(tempfile.mkdtemp()) / "serve.log"
        server = serve.spawned([*args, *(["--device", a.device] if a.device else [])], log)
    with server as (url, _):
        client = openai.OpenAI(base_url=url, api_key=a.api_key, max_retries=0, timeout=3600)

        def ask(i: int, stream: bool = False) -> tuple[float, float, int]:
            """(latency, time to first token, tokens) of request i."""
            kw = dict(model="m", messages=messages(i), max_tokens=a.max_tokens, temperature=1.0,
                      seed=i)  # fmt: skip
            t0 = time.perf_counter()
            if not stream:
                r = client.chat.completions.create(**kw)
                return time.perf_counter() - t0, float("nan"), r.usage.completion_tokens
            first, tokens = float("nan"), 0
            for c in client.chat.completions.create(**kw, stream=True,
                                                    stream_options={"include_usage": True}):  # fmt: skip
                if c.choices and c.choices[0].delta.content and first != first:
                    first = time.perf_counter() - t0
                if c.usage:
                    tokens = c.usage.completion_tokens
            return time.perf_counter() - t0, first, tokens

        def together(n: int, stream: bool = False) -> tuple[float, list]:
            with concurrent.futures.ThreadPoolExecutor(n) as pool:
                t0 = time.perf_counter()
                got = list(pool.map(lambda i: ask(i, stream), range(n)))
            return time.perf_counter() - t0, got

        ask(0)  # warm-up: first-call allocations are not serving speed
        rows = []
        t0 = time.perf_counter()
        got = [ask(i) for i in range(serial)]
        rows.append((f"{serial} one at a time", time.perf_counter() - t0, got))
        for n in clients:
            rows.append((f"{n} at once", *together(n)))
        if not a.no_stream:
            rows.append((f"{serial} at once, streamed", *together(serial, stream=True)))
    requests = [generate.Request(messages(i), generate.row_seed(i), 1.0, a.max_tokens)
                for i in range(serial)]  # fmt: skip
    t0 = time.perf_counter()
    drawn = generate.run(loaded, requests)
    sampler = sum(len(d.tokens) for d in drawn) / (time.perf_counter() - t0)

    where = f"the server at {a.url}" if a.url else "this checkout's server"
    print(f"{a.model} on {loaded.device}, {where}, up to {a.max_tokens} tokens a request")
    head = f"{'mode':<24}{'wall s':>8}{'tok/s':>9}{'p50 s':>8}{'p95 s':>8}{'1st tok s':>11}"
    print(head)
    rate = {}
    for name, wall, got in rows:
        lat = [g[0] for g in got]
        firsts = [g[1] for g in got if g[1] == g[1]]
        rate[name] = sum(g[2] for g in got) / wall
        first = f"{statistics.median(firsts):>11.2f}" if firsts else f"{'-':>11}"
        print(f"{name:<24}{wall:>8.2f}{rate[name]:>9.1f}{pct(lat, 0.5):>8.2f}"
              f"{pct(lat, 0.95):>8.2f}{first}")  # fmt: skip
    print(f"{'batched sampler, ' + str(serial):<24}{'':>8}{sampler:>9.1f}")
    at_once = rate.get(f"{serial} at once", rate[f"{max(clients)} at once"])
    print(
        f"{serial} at once / {serial} one at a time: {at_once / rate[f'{serial} one at a time']:.2f}x"
    )
    print(f"{serial} at once / batched sampler: {at_once / sampler:.2f}x (target 0.8)")
    print(
        f"one stream: {rate['1 at once']:.1f} tok/s; weight-read bound {bound:.1f} tok/s "
        f"({weight_bytes / 1e9:.2f} GB of weights); {rate['1 at once'] / bound:.0%} of it "
        "(target 70%)"
    )


if __name__ == "__main__":
    main()
