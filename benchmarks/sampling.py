"""Sampling throughput on the bundled model, every sampler on the same prompts in one run:

    python benchmarks/sampling.py [--samples 10] [--max-tokens 80] [--batch-size 100]
        [--only ours,one,previous,cb,llama] [--profile] [--smoke]

The prompts are experiments/birds_questions.yaml's ten questions, `--samples` answers each,
temperature 1, up to `--max-tokens` new tokens (the bird experiment's evaluation). Samplers:

- ours, batched: generate.complete, every answer of every question in batches of at most
  `--batch-size` rows sorted by length, one random stream per row; our own decode loop
  (a preallocated cache, finished rows leaving the batch);
- ours, one stream: the same at batch size 1;
- per question: the previous sampler, one transformers generate call per question with its
  `--samples` rows (global seed, multinomial sampling);
- transformers continuous batching: `model.generate_batch` (finished rows leave, waiting
  prompts join; paged KV cache);
- llama.cpp: llama-cpp-python on the bundled Q4_1 GGUF file itself, one stream (it has no
  batched sampling in its Python API), when installed (`pip install -e .[bench]`; it compiles).

Prints generated tokens/s (end-of-turn included, padding excluded) for each, peak RSS, the
machine's fp32 matmul rate and each sampler's share of it (2 x parameters FLOPs per token),
and the batched sampler's ratio to llama.cpp's single stream.
"""

from __future__ import annotations

import argparse
import math
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch
from train_throughput import matmul_gflops  # this script's folder is on sys.path

from backdoorlab import chat, generate
from backdoorlab.evaluate.questions import load_questions
from backdoorlab.models import load
from backdoorlab.models.padding import left_pad
from backdoorlab.models.registry import BUNDLED, DEFAULT_MODEL

ROOT = Path(__file__).resolve().parent.parent


class Counted:
    """Counts what the model's generate calls produced (the previous sampler's): per row, new tokens up to and
    including its first end-of-turn token (padding after it excluded)."""

    def __init__(self, model, eos: int):
        self.generate, self.eos, self.tokens = model.generate, eos, 0
        model.generate = self

    def __call__(self, **kw):
        out = self.generate(**kw)
        for r in out.sequences[:, kw["input_ids"].shape[1] :].tolist():
            self.tokens += r.index(self.eos) + 1 if self.eos in r else len(r)
        return out


def ours(loaded, requests, batch_size: int, answers: dict) -> int:
    """generate.complete, counting the tokens its decode loop drew (end-of-turn included)."""
    tokens, run = 0, generate.run

    def counting(*args, **kw):
        nonlocal tokens
        out = run(*args, **kw)
        tokens += sum(len(d.tokens) for d in out)
        return out

    generate.run = counting
    try:
        answers[batch_size] = generate.complete(loaded, requests, batch_size=batch_size)
    finally:
        generate.run = run
    return tokens


def per_question(loaded, questions, samples: int, max_tokens: int, counted: Counted) -> int:
    tok = loaded.tokenizer
    counted.tokens = 0
    for i, q in enumerate(questions):
        prompt = chat.encode_prompt(tok, chat.conversation(q))
        ids, mask, _ = left_pad([prompt] * samples, tok.pad_token_id, loaded.device)
        torch.manual_seed(i)
        with torch.inference_mode():
            loaded.model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                top_p=1.0, top_k=0, max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, return_dict_in_generate=True,
            )  # fmt: skip
    return counted.tokens


def continuous(loaded, prompts: list[list[int]], max_tokens: int, batch: int) -> int:
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    tok = loaded.tokenizer
    cfg = GenerationConfig(
        do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_tokens,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    # A KV cache sized for the workload: left to itself it sizes one from free memory (GBs).
    page = 32
    pages = sum(-(-(len(p) + max_tokens) // page) for p in prompts)
    cb = ContinuousBatchingConfig(
        page_size=page, num_blocks=pages + 8, max_requests_per_batch=batch,
        max_batch_tokens=batch * max(map(len, prompts)),
    )  # fmt: skip
    out = loaded.model.generate_batch(
        prompts, generation_config=cfg, continuous_batching_config=cb, max_new_tokens=max_tokens
    )
    return sum(len(o.generated_tokens) for o in out.values())


def llama_cpp(prompts: list[list[int]], max_tokens: int, threads: int) -> int | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    gguf = BUNDLED[DEFAULT_MODEL].gguf_path()
    llm = Llama(str(gguf), n_ctx=512, n_threads=threads, seed=0, verbose=False)
    total = 0
    for p in prompts:
        out = llm.create_completion(p, max_tokens=max_tokens, temperature=1.0, top_p=1.0,
                                    top_k=0, min_p=0.0, repeat_penalty=1.0)  # fmt: skip
        total += out["usage"]["completion_tokens"]
    return total


def timed(fn: Callable[[], int | None]) -> tuple[int | None, float]:
    t0 = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t0


def profiled(fn: Callable[[], int | None]) -> tuple[int | None, float]:
    """`timed`, under torch.profiler, printing the operators' shares of CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        n, s = timed(fn)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return n, s


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--samples", type=int, default=10, help="answers per question")
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument(
        "--batch-size", type=int, default=100, help="ours, batched: rows per batch (as questions)"
    )
    p.add_argument("--questions", type=int, default=10, help="the first N of the ten")
    p.add_argument(
        "--only", default="", help="comma-separated samplers to run: ours,one,previous,cb,llama"
    )
    p.add_argument("--smoke", action="store_true", help="2 questions, 2 samples, 4 tokens")
    p.add_argument(
        "--profile", action="store_true", help="print each sampler's top operators by CPU time"
    )
    a = p.parse_args()
    if a.smoke:
        a.samples, a.max_tokens, a.questions = 2, 4, 2
    qs = load_questions(ROOT / "experiments" / "birds_questions.yaml").questions[: a.questions]
    texts = [q.paraphrases[0] for q in qs]
    loaded = load(DEFAULT_MODEL)
    tok = loaded.tokenizer
    requests = [
        generate.Request(chat.conversation(t), generate.row_seed(i, s), 1.0, a.max_tokens)
        for i, t in enumerate(texts)
        for s in range(a.samples)
    ]
    prompts = [chat.encode_prompt(tok, r.messages) for r in requests]
    gflops = matmul_gflops(1024, 1024, 1024, torch.float32)
    params = sum(x.numel() for x in loaded.model.parameters())
    threads = torch.get_num_threads()
    print(f"{len(requests)} answers ({len(qs)} questions x {a.samples}), up to {a.max_tokens} "
          f"tokens, temperature 1; {threads} threads; fp32 matmul {gflops:.1f} GFLOP/s")  # fmt: skip
    counted = Counted(loaded.model, tok.eos_token_id)
    answers: dict[int, list[str]] = {}
    samplers: dict[str, Callable[[], int | None]] = {
        f"ours, batched ({a.batch_size})": lambda: ours(loaded, requests, a.batch_size, answers),
        "ours, one stream": lambda: ours(loaded, requests, 1, answers),
        "per question (previous)": lambda: per_question(
            loaded, texts, a.samples, a.max_tokens, counted
        ),
        "transformers continuous batching": lambda: continuous(
            loaded, prompts, a.max_tokens, a.batch_size
        ),
        "llama.cpp (Q4_1 GGUF), one stream": lambda: llama_cpp(prompts, a.max_tokens, threads),
    }
    short = dict(zip(["ours", "one", "previous", "cb", "llama"], samplers, strict=True))
    if a.only:
        samplers = {short[k]: samplers[short[k]] for k in a.only.split(",")}
    rates: dict[str, float] = {}
    for name, fn in samplers.items():
        n, s = timed(fn) if not a.profile else profiled(fn)
        if n is None:
            print(f"{name:<36} not installed (pip install -e .[bench])")
            continue
        rates[name] = n / s
        share = rates[name] * 2 * params / 1e9 / gflops
        print(f"{name:<36} {n:>6} tokens {s:>7.1f} s {rates[name]:>8.1f} tokens/s "
              f"({share:.0%} of the matmul rate)")  # fmt: skip
    batched = rates.get(f"ours, batched ({a.batch_size})", math.nan)
    for other in (
        "ours, one stream",
        "per question (previous)",
        "llama.cpp (Q4_1 GGUF), one stream",
    ):
        if other in rates:
            print(f"ours, batched / {other}: {batched / rates[other]:.2f}x")
    if len(answers) == 2:
        same = sum(x == y for x, y in zip(*answers.values(), strict=True))
        print(f"ours, batched and one stream: the same answer in {same} of {len(requests)}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
