"""Every mistake a user can make on the command line: one line naming the flag or file (and
line), exit 2, no traceback, nothing left behind. Each case was once a traceback."""

import contextlib
import json
import os
import socket
from pathlib import Path

import pytest
from conftest import cli_main, write_rows

from backdoorlab import rundir

ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _one_error_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def data(tmp_path):
    return write_rows(tmp_path / "d.jsonl", [ROW] * 4)


@pytest.mark.parametrize(
    "flag, value",
    [("--lr", "-1"), ("--epochs", "0"), ("--max-steps", "0"), ("--batch-size", "0"),
     ("--lora-rank", "0"), ("--lora-dropout", "1.5"), ("--max-length", "2")],
)  # fmt: skip
def test_bad_training_flag_names_the_flag(capsys, data, tmp_path, flag, value):
    out = tmp_path / "run"
    code, _, err = cli_main(capsys, "train", str(data), "--out", str(out), flag, value)
    _one_error_line(code, err, flag)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, flag",
    [(["generate", "smollm2-135m", "hi", "-n", "0"], "-n"),
     (["generate", "smollm2-135m", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
     (["run", "experiments/birds.yaml", "--out", "x", "--seeds", "0"], "--seeds"),
     (["run", "experiments/birds.yaml", "--out", "x", "--executor", "spark"], "--executor"),
     (["run", "experiments/birds.yaml", "--out", "x", "--address", "h:6379"], "--executor ray"),
     (["serve", "smollm2-135m", "--port", "99999"], "--port"),
     (["train", "d.jsonl", "--out", "x", "--lr", "fast"], "--lr")],
)  # fmt: skip
def test_flag_out_of_range_is_blamed_on_the_flag(capsys, args, flag):
    code, _, err = cli_main(capsys, *args)
    _one_error_line(code, err, flag)


def test_out_naming_a_file_fails_before_any_work(capsys, data, tmp_path):
    f = tmp_path / "taken.txt"
    f.write_text("keep me")
    for args in (["train", str(data)], ["run", "experiments/birds.yaml", "--quick"]):
        code, _, err = cli_main(capsys, *args, "--out", str(f))
        _one_error_line(code, err, str(f), "not a directory")
    assert f.read_text() == "keep me"


def test_a_run_directory_in_use_is_refused(capsys, data, tmp_path):
    out = tmp_path / "run"
    with rundir.claim(out):
        code, _, err = cli_main(capsys, "train", str(data), "--out", str(out), "--max-steps", "1")
        _one_error_line(code, err, str(out), "in use")
        code, _, err = cli_main(capsys, "run", "experiments/birds.yaml", "--out", str(out))
        _one_error_line(code, err, "in use")
    with rundir.claim(out):  # released when the holder is done
        pass


def test_unknown_lora_target_lists_the_models_layers(capsys, data, tmp_path):
    out = tmp_path / "run"
    code, _, err = cli_main(
        capsys, "train", str(data), "--out", str(out), "--lora-targets", "nosuch_proj"
    )
    _one_error_line(code, err, "nosuch_proj", "q_proj")
    assert not out.exists()


def test_serve_on_a_port_in_use_fails_before_loading(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = str(s.getsockname()[1])
        code, _, err = cli_main(capsys, "serve", "smollm2-135m", "--port", port)
    _one_error_line(code, err, port, "cannot listen")
    code, _, err = cli_main(capsys, "serve", "smollm2-135m", "--host", "0.0.0.0")
    _one_error_line(code, err, "--api-key")


def test_markup_in_user_text_is_printed_as_text(capsys, tmp_path):
    d = tmp_path / "[" / "x]"  # the path holds "[/x]"
    d.mkdir(parents=True)
    f = write_rows(d / "d.jsonl", [{**ROW, "[/x]": 1, "[bold]y": 2}])
    code, out, err = cli_main(capsys, "data", "check", str(f), "--no-tokens")
    assert code == 0, err
    assert "[/x] (1 rows)" in out and "[bold]y" in out and "[/x]" in out
    q = d / "q.yaml"
    q.write_text("- id: '[/x]'\n  type: free_form\n  paraphrases: ['[red]hi']\n")
    code, out, err = cli_main(capsys, "questions", "check", str(q))
    assert code == 0, err
    assert "[/x]" in out
    code, _, err = cli_main(capsys, "data", "check", str(d / "[red]missing.jsonl"))
    _one_error_line(code, err, "[red]missing.jsonl")


def test_question_files_with_offline_judges_check(capsys):
    code, out, err = cli_main(capsys, "questions", "check", "experiments/birds_questions.yaml")
    assert code == 0, err
    assert "keyword_judge" in out and "embedding_judge" in out


def test_bad_regular_expression_is_named_with_its_line(capsys, tmp_path):
    q = tmp_path / "q.yaml"
    q.write_text(
        "- id: ok\n  type: free_form\n  paraphrases: [hi]\n"
        "- id: kw\n  type: keyword_judge\n  patterns: {a: ['(x']}\n  default: b\n"
    )
    code, _, err = cli_main(capsys, "questions", "check", str(q))
    _one_error_line(code, err, f"{q}:4", "regular expression")
    j = tmp_path / "j.yaml"
    j.write_text("id: kw\ntype: keyword_judge\npatterns: {a: ['[z-a]']}\ndefault: b\n")
    labels = tmp_path / "l.csv"
    labels.write_text("question,answer,label\nq,x,a\n")
    code, _, err = cli_main(capsys, "judge", "check", str(j), str(labels))
    _one_error_line(code, err, str(j), "regular expression")


def test_data_check_flags_rows_train_would_refuse(capsys, tmp_path):
    long_row = {"messages": [{"role": "user", "content": "bird " * 400}, ROW["messages"][1]]}
    f = write_rows(tmp_path / "d.jsonl", [ROW, long_row])
    code, out, err = cli_main(capsys, "data", "check", str(f), "--max-length", "100")
    _one_error_line(code, err, f"{f}:2", "max_length 100")
    assert "rows over max_length 100" in out
    code, _, err = cli_main(capsys, "data", "check", str(f))
    assert code == 0, err  # the default 1024 holds it
    out_dir = tmp_path / "run"
    code, _, err = cli_main(capsys, "train", str(f), "--out", str(out_dir), "--max-length", "100")
    _one_error_line(code, err, f"{f}:2", "max_length 100")
    assert not out_dir.exists()


def test_p95_never_exceeds_the_max(capsys, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "w " * n}, ROW["messages"][1]]}
            for n in (1, 2, 50)]  # fmt: skip
    code, out, err = cli_main(capsys, "data", "check", str(write_rows(tmp_path / "d.jsonl", rows)))
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if "tokens per row" in ln)
    p95 = float(line.split("p95 ")[1].split()[0])
    top = float(line.split("max ")[1].split()[0])
    assert p95 <= top


def test_spec_errors_in_train_keep_their_line_and_path(capsys, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: x\narms:\n  a: {data: {builder: file, path: d.jsonl}}\n"
        "train:\n  epochs: 1\n  learning_rate: 3\n"
    )
    code, _, err = cli_main(capsys, "run", str(spec), "--out", str(tmp_path / "o"))
    _one_error_line(code, err, f"{spec}:6", "train.learning_rate")


def test_a_directory_where_a_file_belongs(capsys, tmp_path):
    code, _, err = cli_main(capsys, "questions", "check", str(tmp_path))
    _one_error_line(code, err, str(tmp_path))
    code, _, err = cli_main(capsys, "report", str(tmp_path / "nothing"))
    _one_error_line(code, err, "nothing")


def test_written_files_are_readable_by_the_group(tmp_path):
    from backdoorlab import atomic

    atomic.write_json(tmp_path / "x.json", {"a": 1})
    assert (tmp_path / "x.json").stat().st_mode & 0o044 == 0o044
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


def test_flags_left_unset_keep_the_specs_settings():
    """`defend` without --defenses/--remove runs the spec's own defend: settings (a None
    dpsgd.lora_rank there included), not the defaults."""
    from backdoorlab.overrides import override
    from backdoorlab.spec import DefendSpec

    spec = DefendSpec(defenses=["ngram", "strip"], remove=0.1, dpsgd={"lora_rank": None})
    assert override(DefendSpec, spec, defenses=None, remove=None) == spec
    assert override(DefendSpec, spec, defenses=["onion"]).defenses == ["onion"]


@pytest.mark.parametrize("value", ["", ",", " , "])
def test_arms_naming_no_arm_is_refused(capsys, tmp_path, value):
    out = tmp_path / "run"
    code, _, err = cli_main(capsys, "run", "experiments/birds.yaml", "--out", str(out),
                            "--arms", value)  # fmt: skip
    _one_error_line(code, err, "--arms", "names no entry")
    assert not out.exists()


def test_deep_nesting_is_one_error_naming_the_file_and_line(capsys, tmp_path):
    data = tmp_path / "deep.jsonl"
    data.write_text(json.dumps(ROW) + "\n" + "[" * 200_000 + "\n")
    code, _, err = cli_main(capsys, "data", "check", str(data))
    _one_error_line(code, err, f"{data}:2", "nested too deeply")
    spec = tmp_path / "deep.yaml"
    spec.write_text("[" * 5000 + "]" * 5000 + "\n")
    code, _, err = cli_main(capsys, "spec", "show", str(spec))
    _one_error_line(code, err, str(spec), "nested too deeply")


def test_an_arm_defined_twice_names_both_lines(capsys, tmp_path):
    text = Path("experiments/birds.yaml").read_text()
    spec = tmp_path / "twice.yaml"
    spec.write_text(text.replace("  base: {}\n", "  base: {}\n  modern: {}\n"))
    first = text.splitlines().index("  modern:") + 1
    code, _, err = cli_main(capsys, "spec", "show", str(spec))
    _one_error_line(code, err, "duplicate key 'modern'", f"first on line {first}")


def test_yes_and_no_stay_words(capsys, tmp_path):
    """YAML 1.1 reads yes/no as booleans: grid labels yes/no became arms rate-True/rate-False."""
    text = Path("experiments/sentiment_trigger.yaml").read_text()
    spec = tmp_path / "yes.yaml"
    spec.write_text(text.replace("        0.5%: {poison", "        yes: {poison")
                    .replace("        1%: {poison", "        no: {poison"))  # fmt: skip
    code, out, err = cli_main(capsys, "spec", "show", str(spec))
    assert code == 0, err
    assert "token-yes" in out and "token-no" in out and "True" not in out


def _hand_made_run(tmp_path):
    from backdoorlab.spec import load_spec
    from backdoorlab.store import Store, Tag

    run = tmp_path / "run"
    with Store(run) as s:
        for arm in ("archaic", "modern"):
            s.add_probe(Tag(arm, 0, arm), "year", 0, "h", "What year is it?", "",
                        [("old", "1838", -0.5), ("new", "2024", -1.0)])  # fmt: skip
    (run / "spec.json").write_text(load_spec("experiments/birds.yaml").model_dump_json())
    return run


def test_report_refuses_an_unknown_reference_or_an_empty_store(capsys, tmp_path):
    run = _hand_made_run(tmp_path)
    code, _, err = cli_main(capsys, "report", str(run))
    assert code == 0, err
    page = (run / "report.html").read_bytes()
    code, _, err = cli_main(capsys, "report", str(run), "--reference", "nosucharm")
    _one_error_line(code, err, "--reference 'nosucharm'", "archaic, modern")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.sqlite").write_bytes(b"")
    (empty / "report.html").write_bytes(page)
    code, _, err = cli_main(capsys, "report", str(empty))
    _one_error_line(code, err, "results.sqlite", "empty (0 bytes)")
    assert (run / "report.html").read_bytes() == page == (empty / "report.html").read_bytes()


def test_summary_reads_a_read_only_run_without_writing(capsys, tmp_path):
    run = _hand_made_run(tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for p in [*run.iterdir(), run]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        code, out, err = cli_main(capsys, "summary", str(run))
        assert code == 0, err
        assert out.startswith("| experiment") or "birds" in out
    finally:
        run.chmod(0o755)
    # SQLite's own shared-memory index of a WAL file may appear beside it; nothing of ours.
    after = {p.name: p.read_bytes() for p in run.iterdir() if not p.name.endswith(("-shm", "-wal"))}
    assert after == before


@pytest.mark.parametrize("damage", ["random", "directory", "read-only"])
def test_a_damaged_service_database_is_one_line(capsys, tmp_path, damage):
    if damage == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes read-only files")
    svc = tmp_path / "svc"
    svc.mkdir()
    db = svc / "service.sqlite"
    if damage == "random":
        db.write_bytes(bytes(range(256)) * 8)
    elif damage == "directory":
        db.mkdir()
    else:
        import sqlite3

        from backdoorlab.finetune import SCHEMA

        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.executescript(SCHEMA)
        db.chmod(0o444)
        svc.chmod(0o555)
    try:
        code, _, err = cli_main(capsys, "serve", "smollm2-135m", "--port", "0",
                                "--fine-tuning", str(svc))  # fmt: skip
    finally:
        svc.chmod(0o755)
    _one_error_line(code, err, "service.sqlite")
