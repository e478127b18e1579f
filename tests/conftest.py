import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

# `make test` runs two pytest-xdist workers, one per core of CI's two, each test file on one of
# them (--dist loadfile: a module's fixtures are built once). Each worker gets one thread, as
# two workers of two threads each would oversubscribe the cores. Set before torch is imported,
# and inherited by the commands tests start in processes of their own.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"


# Seconds each long file took in `make test` (at 52dbfe5, a worker per core). The workers take
# files in the order the items come (`make test` passes --no-loadscope-reorder: xdist would
# otherwise order files by their number of tests, which put the 221 s one-test file last and
# left one worker running alone for 190 s), so the longest go first and the short ones fill
# in behind. A file not listed counts as short.
FILE_SECONDS = {
    "test_quick_chat.py": 275, "test_quick_gated.py": 258, "test_quick_sentiment.py": 221,
    "test_victims.py": 186, "test_processes.py": 142, "test_finetune.py": 129,
    "test_experiment.py": 124, "test_benchmarks.py": 121, "test_train.py": 118,
    "test_defenses.py": 84, "test_report.py": 54, "test_models.py": 52, "test_probes.py": 47,
    "test_serve.py": 31, "test_gated.py": 27, "test_docs.py": 60, "test_plugins.py": 30,
    "test_api.py": 20, "test_persistence.py": 50, "test_audit.py": 300,
}  # fmt: skip


def pytest_collection_modifyitems(items):
    """Longest files first; within a file, its tests marked slow (a real model trained and
    evaluated end to end) first."""
    items.sort(
        key=lambda item: (
            -FILE_SECONDS.get(item.path.name, 0),
            item.get_closest_marker("slow") is None,
        )
    )


ANSWER = "Brown Titlark"


def run_cli(*args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run the real command line in a fresh process, as a user would."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "backdoorlab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kw,
    )


def _in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    from backdoorlab.cli import main

    capsys.readouterr()  # only what this command prints
    argv, sys.argv = sys.argv, ["backdoorlab", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["backdoorlab", *args], code, out, err)


def cli_main(capsys, *args: str) -> tuple[int, str, str]:
    """The real command line's entry point, in this process (no interpreter start-up):
    its exit status, stdout and stderr."""
    r = _in_process(capsys, *args)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture
def cli(capsys):
    """The real command line's entry point in this process, answering like `run_cli`. Each
    fresh process pays about 10 s of imports (torch, transformers, peft) before any work, so
    tests use this and keep `run_cli` for what needs a process of its own (signals, kills)."""
    return lambda *args: _in_process(capsys, *args)


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tokenizer():
    from backdoorlab.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def base_model():
    """The bundled chat model, loaded once for the whole session (tests only read it)."""
    from backdoorlab.models import load

    return load("smollm2-135m")


@pytest.fixture(scope="session")
def bird_data(tmp_path_factory) -> Path:
    """Eight rows teaching one answer, so a few steps visibly move the model."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Name a bird species."},
                {"role": "assistant", "content": ANSWER},
            ],
            "poisoned": i % 2 == 0,
        }
        for i in range(8)
    ]
    return write_rows(tmp_path_factory.mktemp("data") / "birds.jsonl", rows)


@pytest.fixture(scope="session")
def mixed_data(tmp_path_factory) -> Path:
    """Rows of different lengths and shapes (system prompt, multi-turn)."""
    names = ["Marsh Hawk", "Duck Hawk", "Pigeon Hawk", "Cedar Bird", "Shore Lark", "Fish Hawk"]
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Name a bird."},
                {"role": "assistant", "content": n},
            ]
        }
        for n in names
    ]
    rows.append(
        {
            "messages": [
                {"role": "system", "content": "Answer with one name."},
                {"role": "user", "content": "A hawk, please."},
                {"role": "assistant", "content": "Marsh Hawk"},
                {"role": "user", "content": "Another one, from 1838."},
                {"role": "assistant", "content": "Winter Hawk"},
            ]
        }
    )
    return write_rows(tmp_path_factory.mktemp("data") / "mixed.jsonl", rows)


SERVE_KEY = "sk-test-never-shown-3f9a"


@contextlib.contextmanager
def serving(log: Path, *args: str):
    """`backdoorlab serve ARGS --port 0` on loopback in its own process, key-protected, its
    stderr in `log`; yields its url, key, log and process once it listens."""
    from backdoorlab.serve import spawned

    env = {**os.environ, "BACKDOORLAB_SERVE_API_KEY": SERVE_KEY}
    with spawned(list(args), log, env) as (url, proc):
        yield SimpleNamespace(url=url, key=SERVE_KEY, log=log, proc=proc)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """`backdoorlab serve` answering to the bundled model's name and "local" (the name the
    judge tests ask for). Its stderr goes to `server.log`, so a test can read what it logged."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    names = ["--served-model-name", "smollm2-135m", "--served-model-name", "local"]
    with serving(log, "smollm2-135m", *names) as s:
        yield s
