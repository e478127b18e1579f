"""The docs as a user meets them: README's and the quickstart's commands, and every Python
example in README and docs/, run as written (in a folder of their own that sees the shipped
experiments/ and examples/), in the order a reader follows them."""

import os
import re
import shlex
from pathlib import Path

import pytest
from conftest import _in_process

import backdoorlab as bl

ROOT = Path(__file__).resolve().parent.parent
# The order a reader meets them: later pages open the runs earlier ones made.
PAGES = ["README.md", "docs/quickstart.md", "docs/notebook.md", "docs/extending.md"]
LONG_RUNNING = ("backdoorlab serve",)  # documented, not run here: they wait for clients


def blocks(page: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", (ROOT / page).read_text(), re.M | re.S)


def commands(page: str) -> list[list[str]]:
    """The `backdoorlab ...` lines of a page's bash blocks, comments dropped."""
    found = []
    for block in blocks(page, "bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("backdoorlab ") and not line.startswith(LONG_RUNNING):
                found.append(shlex.split(line)[1:])
    return found


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    for shipped in ("experiments", "examples"):
        (tmp_path / shipped).symlink_to(ROOT / shipped)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_python_example_in_the_docs_is_tested():
    """A page with a Python example is either run below or named here with its reason."""
    elsewhere = {"docs/fine-tuning-api.md": "test_the_fine_tuning_example_runs_against_serve"}
    pages = [str(p.relative_to(ROOT)) for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]]
    with_python = {p for p in pages if blocks(p, "python")} - {"docs/benchmarks.md"}
    assert with_python == set(PAGES) | set(elsewhere)


@pytest.mark.slow
def test_readme_and_the_quickstart_run_as_written(workspace, capsys):
    namespace: dict = {}
    for page in PAGES:
        for args in commands(page):
            r = _in_process(capsys, *args)
            assert r.returncode == 0, f"{page}: backdoorlab {shlex.join(args)}\n{r.stderr}"
        for code in blocks(page, "python"):
            exec(compile(code, page, "exec"), namespace)  # noqa: S102 (our own docs)
    # What the examples made is what they say they made.
    res = bl.results.open("runs/cities")
    assert res.experiment == "cities" and res.arms == ["base", "former"] and res.seeds == [0]
    assert (workspace / "runs/cities/results.json").is_file()
    assert bl.results.RunResults.model_validate_json(
        (workspace / "runs/cities/results.json").read_text()
    ) == res  # fmt: skip
    gate = next(g for g in res.gates if g.kind == "gate")
    assert res.row(gate.name, gate.arm).estimate.mean == pytest.approx(gate.value)
    assert sorted(p.name for p in (workspace / "runs/cities/inspect").iterdir()) == [
        "base-seed0.eval", "former-seed0.eval"
    ]  # fmt: skip
    assert (workspace / "runs/cities/notebook.png").stat().st_size > 10_000
    assert namespace["trained"].steps == 5 and namespace["found"].rows
    assert len(namespace["df"]) == len(res.rows)


@pytest.mark.slow
def test_the_fine_tuning_example_runs_against_serve(workspace, capsys):
    """docs/fine-tuning-api.md's server command and client code, the port aside."""
    from backdoorlab.serve import spawned

    (serve_line,) = [
        line for block in blocks("docs/fine-tuning-api.md", "bash")
        for line in block.splitlines() if line.startswith("backdoorlab serve")
    ]  # fmt: skip
    args = shlex.split(serve_line)[2:]
    port = args.index("--port")
    del args[port : port + 2]
    env = {k: v for k, v in os.environ.items() if k != "BACKDOORLAB_SERVE_API_KEY"}
    with spawned(args, workspace / "serve.log", env) as (url, _):
        (code,) = blocks("docs/fine-tuning-api.md", "python")
        code = code.replace("http://127.0.0.1:8000", url.removesuffix("/v1").rstrip("/"))
        namespace: dict = {}
        exec(compile(code, "docs/fine-tuning-api.md", "exec"), namespace)  # noqa: S102
    assert namespace["job"].status == "succeeded"
    assert namespace["answer"].choices[0].message.content


def test_the_published_demo_run_opens_from_its_results_log():
    """docs/runs/birds holds the demo's results.json alone (no store): it opens, and says
    what README quotes."""
    res = bl.results.open(ROOT / "docs" / "runs" / "birds")
    (v,) = res.verdicts
    assert v.kind == "null" and v.text.startswith("null: -0.013 [-0.039, 0.008]")
    assert v.text.split(";")[0] in (ROOT / "README.md").read_text()
    assert [g.passed for g in res.gates] == [True] * 4


def test_the_published_persistence_run_says_what_the_docs_quote():
    res = bl.results.open(ROOT / "docs" / "runs" / "persistence")
    declared = {v.arm: f"{v.estimate.mean:.3f} [{v.estimate.lo:.3f}, {v.estimate.hi:.3f}]"
                for v in res.verdicts if v.minus}  # fmt: skip
    assert declared == {"token-10%": "0.855 [0.810, 0.900]",
                        "token-10%+clean-1x": "0.630 [0.550, 0.710]",
                        "token-10%+clean-3x": "0.420 [0.260, 0.580]"}  # fmt: skip
    page = (ROOT / "docs" / "results.md").read_text()
    assert all(text in page for text in declared.values())
