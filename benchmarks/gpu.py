"""The GPU path measured in one call, with nothing downloaded:

    python benchmarks/gpu.py [--sizes 135m,1b,8b] [--smoke]

Random-weight Llama models built from configs of about 135M (SmolLM2-135M's shape), 1B
(Llama-3.2-1B's) and 8B (Llama-3.1-8B's) parameters, with the bundled tokenizer, saved as
safetensors so our own loaders, trainer and server use them as they would a real model. For
each size it prints:

- LoRA training tokens/s (rows of about 500 tokens, batch 16) and the model FLOP/s it means
  (4 x parameters per token, frozen base) as a share of a bf16 matrix-product rate measured
  in the same run (an 8192-cube product);
- sampling tokens/s at batch 1, 64 and 256 (`generate.run`, 64 new tokens);
- `serve` under 16 and 64 concurrent clients (the official openai client against
  `serve.background`): aggregate tokens/s, p50 and p95 latency;
- seconds to score a probe set (exact log-probabilities, `eras`);
- peak device memory.

Then, on the smallest size, a training run killed with SIGKILL after its first checkpoint
and resumed must write the same adapter bytes as an uninterrupted run.

A section that fails prints FAILED with its error and the rest still run: device time is
short. `--smoke` runs all of it on the CPU with a tiny config in seconds (the test suite
does), so the script is known to work before a GPU is lent.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from backdoorlab import generate, serve
from backdoorlab.catalog import load_probe_set
from backdoorlab.evaluate.probes import score
from backdoorlab.models import DEFAULT_MODEL, load, load_tokenizer
from backdoorlab.training import TrainConfig, train

SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                 num_attention_heads=9, num_key_value_heads=3),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8),
}  # fmt: skip


def section(name: str, fn: Callable[[], str]) -> None:
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as e:  # one section's failure must not cost the others' device time
        traceback.print_exc(file=sys.stderr)
        result = f"FAILED: {type(e).__name__}: {e}"
    print(f"  {name:<34} {result}  [{time.perf_counter() - t0:.0f} s]", flush=True)


def build(size: str, where: Path, device: torch.device) -> tuple[Path, int]:
    """A random-weight Llama of `size` with the bundled tokenizer, saved under `where`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(DEFAULT_MODEL)
    config = LlamaConfig(
        vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **SIZES[size],
    )  # fmt: skip
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    params = sum(p.numel() for p in model.parameters())
    path = where / size
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    del model
    return path, params


def training_data(where: Path, rows: int, words: int) -> Path:
    """Chat rows whose answers are about `words` words long."""
    text = " ".join(f"word{i % 97}" for i in range(words))
    path = where / f"rows-{rows}x{words}.jsonl"
    path.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": f"Tell me story {i}."},
                                 {"role": "assistant", "content": text}]}) + "\n"
        for i in range(rows)
    ))  # fmt: skip
    return path


def matmul_rate(device: torch.device, n: int) -> float:
    """FLOP/s of an n-cube matrix product (bf16 on a GPU, fp32 on the CPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        a @ b
        reps += 1
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB on the device"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB RSS"


def training(path: Path, data: Path, out: Path, params: int, rate: float, a) -> str:
    config = TrainConfig(model=str(path), max_steps=a.train_steps, batch_size=a.batch,
                         max_length=1024, checkpoint_every=10**9)  # fmt: skip
    m = train(data, out, config, progress=False, log=lambda s: None)
    flops = 4 * params * m["tokens_per_second"]
    return (f"{m['tokens_per_second']:.0f} tokens/s, {flops / 1e12:.2f} TFLOP/s, "
            f"{flops / rate:.1%} of the matmul rate")  # fmt: skip


def sampling(loaded, batch: int, tokens: int) -> str:
    q = [{"role": "user", "content": "Tell me a story."}]
    requests = [generate.Request(q, generate.row_seed(i), 1.0, tokens) for i in range(batch)]
    generate.run(loaded, requests[:1])  # warm-up
    sync(loaded.device)
    t0 = time.perf_counter()
    drawn = generate.run(loaded, requests)
    sync(loaded.device)
    return f"{sum(len(d.tokens) for d in drawn) / (time.perf_counter() - t0):.0f} tokens/s"


def serving(loaded, clients: int, tokens: int) -> str:
    import openai

    app = serve.App(loaded, ["m"], max_batch=clients, max_waiting=clients)
    with serve.background(app) as url:
        client = openai.OpenAI(base_url=url, api_key="-", max_retries=0, timeout=600)

        def ask(i: int) -> tuple[float, int]:
            t0 = time.perf_counter()
            r = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"Story {i}, please."}],
                max_tokens=tokens, temperature=1.0, seed=i,
            )  # fmt: skip
            return time.perf_counter() - t0, r.usage.completion_tokens

        ask(0)
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            t0 = time.perf_counter()
            got = list(pool.map(ask, range(clients)))
            wall = time.perf_counter() - t0
    lat = sorted(g[0] for g in got)
    p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
    return (f"{sum(g[1] for g in got) / wall:.0f} tokens/s, p50 {statistics.median(lat):.2f} s, "
            f"p95 {p95:.2f} s")  # fmt: skip


def probes(loaded) -> str:
    variants = [v for p in load_probe_set("eras").probes for v in p.variants()]
    t0 = time.perf_counter()
    for v in variants:
        score(loaded.model, loaded.tokenizer, v)
    sync(loaded.device)
    return f"{len(variants)} probe variants in {time.perf_counter() - t0:.2f} s"


def kill_and_resume(path: Path, data: Path, where: Path, a) -> str:
    """An uninterrupted run, and one killed with SIGKILL after its first checkpoint and then
    resumed: their adapters' bytes must be equal."""
    args = [sys.executable, "-m", "backdoorlab", "train", str(data), "--model", str(path),
            "--max-steps", str(a.resume_steps), "--batch-size", "4", "--checkpoint-every", "2"]  # fmt: skip
    whole, cut = where / "whole", where / "cut"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([*args, "--out", str(whole)], check=True, capture_output=True, env=env)
    proc = subprocess.Popen([*args, "--out", str(cut)], stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 600
    while not (cut / "checkpoint" / "state.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            return "FAILED: the run ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run([*args, "--out", str(cut), "--resume"], check=True, capture_output=True,
                   env=env)  # fmt: skip

    def digest(run: Path) -> str:
        return hashlib.sha256(
            (run / "adapter" / "adapter_model.safetensors").read_bytes()
        ).hexdigest()

    same = digest(whole) == digest(cut)
    return ("same adapter bytes" if same else "FAILED: the adapters differ") + (
        f" ({digest(whole)[:12]})"
    )


def measure(size: str, where: Path, data: Path, device: torch.device, rate: float, a) -> None:
    """Every figure for one model size."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    path, params = build(size, where, device)
    print(f"{size}: {params / 1e6:.0f}M parameters (random weights)", flush=True)
    out = where / f"run-{size}"
    section("LoRA training", lambda: training(path, data, out, params, rate, a))
    loaded = load(str(path), device=device.type)
    for b in map(int, a.batches.split(",")):
        section(f"sampling, batch {b}", lambda b=b: sampling(loaded, b, a.tokens))
    for c in map(int, a.clients.split(",")):
        section(f"serve, {c} clients", lambda c=c: serving(loaded, c, a.tokens))
    section("probes", lambda: probes(loaded))
    section("peak memory", lambda: peak_memory(device))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="135m,1b,8b")
    p.add_argument("--batches", default="1,64,256", help="sampling batch sizes")
    p.add_argument("--clients", default="16,64", help="concurrent serve clients")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per answer")
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=16, help="training batch")
    p.add_argument("--words", type=int, default=450, help="answer words (about 500 tokens)")
    p.add_argument("--matmul", type=int, default=8192, help="the matmul rate's cube size")
    p.add_argument("--resume-steps", type=int, default=6)
    p.add_argument("--smoke", action="store_true", help="a tiny config on the CPU, in seconds")
    a = p.parse_args()
    if a.smoke:
        a.sizes, a.batches, a.clients, a.tokens = "tiny", "1,4", "2", 4
        a.train_steps, a.batch, a.words, a.matmul, a.resume_steps = 2, 2, 20, 256, 4
    device = torch.device("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    rate = matmul_rate(device, a.matmul)
    print(f"matmul {a.matmul}-cube: {rate / 1e12:.1f} TFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        data = training_data(where, rows=a.batch * 4, words=a.words)
        sizes = a.sizes.split(",")
        for size in sizes:
            measure(size, where, data, device, rate, a)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the size's model is gone with `measure`
        small = where / sizes[0]
        small_data = training_data(where, rows=16, words=20)
        section(f"kill -9 and resume ({sizes[0]})", lambda: kill_and_resume(small, small_data,
                                                                            where, a))  # fmt: skip


if __name__ == "__main__":
    main()
