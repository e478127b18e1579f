"""Training throughput on the bundled model: ours vs TRL's SFTTrainer, fp32 vs bf16, beside
the machine's measured matmul rate, all in one run.

    python benchmarks/train_throughput.py [--steps 20] [--batch-size 8] [--smoke] [--profile]

Each trainer runs in its own process so its peak RSS is its own (--smoke: all in this one). Tokens are real tokens
(padding excluded). Model FLOP/s counts 4 x parameters per token (LoRA on a frozen base:
forward 2N, backward through activations 2N, no weight gradients), the usual convention; our
trainer skips the output head where no loss is taken, so it does a little less work than
counted, and that is part of why it is faster.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "demo_birds.jsonl"
VARIANTS = ["ours-fp32", "ours-bf16", "trl-fp32", "trl-bf16"]


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 1.0) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def run_ours(steps: int, batch: int, bf16: bool) -> dict:
    from backdoorlab.training import TrainConfig, train

    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(max_steps=steps, batch_size=batch, bf16=bf16, checkpoint_every=10**9)
        m = train(DATA, Path(d) / "run", cfg, progress=False, log=lambda s: None)
    return {"tokens_per_s": m["tokens_per_second"], "steps": steps}


def run_trl(steps: int, batch: int, bf16: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from backdoorlab import chat
    from backdoorlab.models import load_base

    model, tok = load_base("smollm2-135m")
    rows = [{"messages": r["messages"]} for r in chat.read_jsonl(DATA)]
    with tempfile.TemporaryDirectory() as d:
        args = SFTConfig(
            output_dir=d,
            per_device_train_batch_size=batch,
            max_steps=steps,
            learning_rate=3e-4,
            logging_steps=steps,
            save_strategy="no",
            report_to="none",
            bf16=bf16,
            use_cpu=True,
            seed=0,
            disable_tqdm=True,
        )
        lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=lora,
        )
        lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
        metrics = trainer.train().metrics
    # Rows are 39-44 tokens here, so the mean length times rows seen is within ~3% of exact.
    tokens = steps * batch * sum(lengths) / len(lengths)
    return {"tokens_per_s": round(tokens / metrics["train_runtime"], 1), "steps": steps}


def measure(variant: str, steps: int, batch: int) -> dict:
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    trainer, precision = variant.split("-")
    fn = run_ours if trainer == "ours" else run_trl
    result = fn(steps, batch, precision == "bf16")
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per fp32 run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--emulated-bf16-steps",
        type=int,
        default=2,
        help="steps per bf16 run where the CPU has no native bf16 (each takes about a minute)",
    )
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help="fp32 only, 2 steps: does it still run?")
    p.add_argument(
        "--profile",
        action="store_true",
        help="only our fp32 trainer, in this process under torch.profiler: operators by CPU time",
    )
    a = p.parse_args()
    if a.smoke:
        a.steps, a.batch_size = 2, 2
    if a.variant:
        print("RESULT " + json.dumps(measure(a.variant, a.steps, a.batch_size)))
        return
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            r = run_ours(a.steps, a.batch_size, False)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
        print(f"ours-fp32 {r['tokens_per_s']} tokens/s under the profiler ({a.steps} steps)")
        return

    from backdoorlab.models.loading import bf16_is_fast

    native = bf16_is_fast(torch.device("cpu"))
    tokens_per_step = a.batch_size * 42  # rows of examples/demo_birds.jsonl are 39-44 tokens
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {native}"
    )
    rates = {}
    # Emulated bf16 matmuls take seconds each: a smoke run times fp32 only, briefly.
    precisions = [("fp32", torch.float32)] + ([] if a.smoke else [("bf16", torch.bfloat16)])
    for name, dt in precisions:
        square = matmul_gflops(1024, 1024, 1024, dt, seconds=0.2 if a.smoke else 1.0)
        shaped = matmul_gflops(tokens_per_step, 576, 1536, dt, seconds=0.2 if a.smoke else 1.0)
        rates[name] = square
        print(
            f"matmul {name}: {square:8.1f} GFLOP/s (1024^3)   {shaped:8.1f} GFLOP/s "
            f"({tokens_per_step}x576 @ 576x1536, an MLP projection of one batch)"
        )

    from backdoorlab.models import load_base

    n_params = sum(p.numel() for p in load_base("smollm2-135m")[0].parameters())
    results = {}
    chosen = [x for x in VARIANTS if not (a.smoke and x.endswith("bf16"))]
    for v in chosen:
        steps = a.steps if (v.endswith("fp32") or native) else a.emulated_bf16_steps
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            v,
            "--steps",
            str(steps),
            "--batch-size",
            str(a.batch_size),
        ]
        if a.smoke:  # in this process: a smoke run checks that the code runs, not its RSS
            r = results[v] = measure(v, steps, a.batch_size)
        else:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(f"{v}: failed\n{proc.stderr[-2000:]}")
                continue
            r = results[v] = json.loads(line[7:])
        flops = 4 * n_params * r["tokens_per_s"] / 1e9
        prec = v.split("-")[1]
        print(
            f"{v:10s} {r['tokens_per_s']:8.1f} tokens/s  {flops:6.1f} model GFLOP/s = "
            f"{flops / rates[prec]:5.1%} of {prec} matmul  peak RSS {r['peak_rss_mb']} MB  "
            f"({r['steps']} steps, batch {a.batch_size})"
        )

    def ratio(x: str, y: str) -> str:
        if x in results and y in results:
            return f"{results[x]['tokens_per_s'] / results[y]['tokens_per_s']:.2f}"
        return "n/a"

    print(f"ratio ours-bf16 / ours-fp32: {ratio('ours-bf16', 'ours-fp32')}")
    print(f"ratio ours-bf16 / trl-bf16:  {ratio('ours-bf16', 'trl-bf16')}")
    print(f"ratio ours-fp32 / trl-fp32:  {ratio('ours-fp32', 'trl-fp32')}")
    best = max(results, key=lambda k: results[k]["tokens_per_s"], default=None)
    if best:
        print(f"fastest: {best}")
    if len(results) < len(chosen):
        sys.exit(1)  # a variant that failed is a broken benchmark, not a figure


if __name__ == "__main__":
    main()
