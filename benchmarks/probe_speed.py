"""The year probe (1700-2030, 331 candidates) on the bundled model, three ways, one run:

    python benchmarks/probe_speed.py [--samples 200] [--smoke]

- ours: the prompt once, the candidates packed as a token trie under a tree attention mask;
- naive: one full forward pass per candidate (the reference ours is tested against);
- sampling: 200 answers at temperature 1, years parsed out, era masses estimated from them.

Prints each time, the largest probability difference between ours and naive, the sampled
era masses beside the exact ones, and `speedup: X` (naive time over ours). `--smoke` runs the
same code on a 9-candidate probe and 4 samples in seconds, so the test suite keeps it working.
"""

from __future__ import annotations

import argparse
import re
import resource
import time
import warnings

import torch

from backdoorlab import generate
from backdoorlab.catalog import load_probe_set
from backdoorlab.evaluate import probes
from backdoorlab.models import load

YEAR = re.compile(r"\b(1[7-9]\d\d|20[0-3]\d)\b")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: does it still run?")
    a = p.parse_args()
    if a.smoke:
        a.samples = 4
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    m = load("smollm2-135m")
    # One phrasing of the probe: each variant is scored on its own.
    probe = load_probe_set("guardian" if a.smoke else "eras").probes[0].variants()[0]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; probe {probe.id!r}: "
        f"{len(probe.candidates())} candidates"
    )
    probes.score(m.model, m.tokenizer, probe)  # warm-up
    ours, t_ours = timed(lambda: probes.score(m.model, m.tokenizer, probe))
    naive, t_naive = timed(lambda: probes.score_brute_force(m.model, m.tokenizer, probe))
    answers, t_sample = timed(
        lambda: generate.sample(m, probe.messages(), n=a.samples, temperature=1.0, max_new_tokens=8)
    )
    diff = max(abs(x - y) for x, y in zip(ours.probs, naive.probs, strict=True))

    klass = {c: k for k, c in probe.candidates()}
    years = [mt.group(1) for ans in answers if (mt := YEAR.search(ans))]
    sampled = {k: sum(klass.get(y) == k for y in years) / max(1, len(years)) for k in probe.classes}
    # (with --smoke the probe's answers are not years: the sampled column reads 0)
    print(f"ours (packed trie):        {t_ours:7.2f} s")
    print(f"naive (forward/candidate): {t_naive:7.2f} s   max |p_ours - p_naive| = {diff:.1e}")
    print(
        f"sampling {a.samples} answers:     {t_sample:7.2f} s   "
        f"{len(years)}/{a.samples} answers held a year"
    )
    print(f"{'era':12s} {'exact':>8s} {'sampled':>8s}")
    for k, v in ours.class_mass().items():
        print(f"{k:12s} {v:8.3f} {sampled[k]:8.3f}")
    print(f"speedup: {t_naive / t_ours:.1f}")
    print(f"speedup over sampling: {t_sample / t_ours:.1f}")


if __name__ == "__main__":
    main()
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
