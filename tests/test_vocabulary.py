"""One option vocabulary: every CLI option is a stage parameter and every stage parameter is on the
CLI and in recipes; old names still work (with a note); -q/--quiet; plain progress lines off a terminal."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bertopt import recipe, stages
from bertopt.cli.main import app
from bertopt.errors import BertoptError
from bertopt.params import RENAMED

from conftest import run_cli

# CLI parameters that are not stage parameters, and why.
CLI_ONLY = {
    "quiet": "output only (ui.set_quiet), no effect on the artifact",
    "verbose": "output only (bertopt.log's level, set by BertoptCommand), no effect on the artifact",
    "help": "click's",
}
CLI_ONLY_PER_COMMAND = {"bench": {"report": "--report DIR: the command draws the HTML page from the stage's result"}}
# CLI name -> stage parameter name where they differ.
CLI_TO_STAGE = {"json_out": "json_path"}
# Stage parameters a recipe step does not take as a key, and where they come from instead.
RECIPE_ELSEWHERE = {
    "input": "the step's 'input' ('inputs' for bench)",
    "out": "<workdir>/<step name>",
    "force": "bertopt run --force",
    "json_path": "bertopt run --json (the bench step's numbers are in its artifact and the run summary)",
}


def _commands():
    return typer.main.get_command(app).commands


# What a stage function with an options class takes besides the options' fields.
RUN_ARGS = ["input", "out", "force"]
RUN_ARGS_PER_STAGE = {"bench": ["json_path"]}  # where the command's --json goes (run_bench writes it, also for a cached report)


def _stage_params(name: str) -> list[str]:
    """What a stage takes: its options class's fields + RUN_ARGS."""
    return RUN_ARGS + RUN_ARGS_PER_STAGE.get(name, []) + list(stages.options(name).model_fields)


# Keys a valid step of the stage needs beside its required fields (a rule between options asks for one of them).
MINIMAL = {"calibrate": {"data": "x"}}


def _required(stage: str) -> dict:
    return {n: "x" for n, f in stages.options(stage).model_fields.items() if f.is_required()} | MINIMAL.get(stage, {})


def test_every_stage_has_an_options_class():
    assert set(stages.OPTIONS) == set(stages.STAGES)


@pytest.mark.parametrize("name", list(stages.STAGES))
def test_a_stage_with_options_takes_them_as_one_object_or_as_keywords(name):
    params = inspect.signature(stages.get(name)).parameters
    assert list(params)[:3] == ["input", "out", "options"] and "force" in params
    assert "verbose" not in params, "--verbose is bertopt.log's level, set once by the CLI, not a parameter"
    assert any(p.kind is p.VAR_KEYWORD for p in params.values()), "Python callers pass the options as keywords"
    cls = stages.options(name)
    assert cls.STAGE == name and not {"input", "out", "options", "force", "verbose"} & set(cls.model_fields)
    for field, f in cls.model_fields.items():
        assert f.description, f"{cls.__name__}.{field} has no help text"


@pytest.mark.parametrize("name", list(stages.STAGES))
def test_cli_options_and_stage_parameters_match(name):
    cmd = _commands()[name]
    stage = set(_stage_params(name))
    cli = set()
    for p in cmd.params:
        if p.param_type_name == "argument":
            cli.add("input")  # the positional artifact / model folder(s)
        elif p.name not in CLI_ONLY and p.name not in CLI_ONLY_PER_COMMAND.get(name, {}):
            cli.add(CLI_TO_STAGE.get(p.name, p.name))
    assert cli - stage == set(), f"`bertopt {name}` options that are no parameter of run_{name}"
    assert stage - cli == set(), f"run_{name} parameters not reachable from `bertopt {name}`"


def _value(stage: str, name: str):
    f = stages.options(stage).model_fields[name]
    return "x" if f.is_required() else f.default


@pytest.mark.parametrize("name", list(stages.STAGES))
def test_every_stage_parameter_is_a_recipe_key(name):
    for param in _stage_params(name):
        if param in RECIPE_ELSEWHERE:
            continue
        step = _required(name)
        step.setdefault(param, _value(name, param))
        got = recipe.validate_options(Path("r.yaml"), "steps[0]", name, step)
        assert param in got
    with pytest.raises(Exception, match="unknown option"):
        recipe.validate_options(Path("r.yaml"), "steps[0]", name, _required(name) | {"no_such_option": 1})


def test_every_command_has_quiet_and_panels():
    for name, cmd in _commands().items():
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"-q", "--quiet"} <= opts, name
        if name in stages.STAGES:  # stage commands group every option in a panel
            loose = [p.name for p in cmd.params if p.param_type_name == "option" and not p.rich_help_panel]
            assert loose == [], f"{name}: options outside a help panel: add them to PANELS in bertopt/cli/{name}.py"


@pytest.mark.parametrize("name", ["qat", "calibrate", "bench", "compress"])
def test_help_fits_80_columns(name):
    r = run_cli(name, "--help", env={"COLUMNS": "80"})
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert not any("…" in line for line in lines), "an option name or help text was cut off"
    for panel in ("Data", "Output and logging"):
        assert f"─ {panel} ─" in r.stdout
    for old in RENAMED.get(name, {}):
        assert "--" + old.replace("_", "-") + " " not in r.stdout, "old names are hidden"


def _record(monkeypatch, target: str) -> dict:
    seen: dict = {}

    def fake(*args, **kwargs):
        seen.update(kwargs, args=args)

    monkeypatch.setattr(target, fake)
    return seen


def test_old_cli_names_still_work_with_a_note(monkeypatch):
    import bertopt.params as params

    monkeypatch.setattr(params, "_NOTED", set())
    seen = _record(monkeypatch, "bertopt.qat.stage.run_qat")
    r = CliRunner().invoke(app, ["qat", "m", "-o", "o", "--data", "d.csv", "--labels-column", "label", "--limit=7",
                                 "--warmup", "0.2", "--exclude", "a,b", "--exclude", "c"])
    assert r.exit_code == 0, r.output
    o = seen["options"]  # the command passes the parsed options object
    assert o.label_column == "label" and o.samples == 7 and o.warmup_ratio == 0.2
    assert o.exclude == ["a", "b", "c"] and seen["args"] == ("m", Path("o"))
    for old, new in (("--labels-column", "--label-column"), ("--limit", "--samples"), ("--warmup", "--warmup-ratio")):
        assert f"note: bertopt qat: {old} is now {new}" in r.stderr

    seen = _record(monkeypatch, "bertopt.calibrators.stage.run_calibrate")
    r = CliRunner().invoke(app, ["calibrate", "m", "-o", "o", "--data", "d.csv", "--include-bmm", "--exclude", "*/a/*,*/b/*"])
    assert r.exit_code == 0, r.output
    assert seen["options"].quantize_bmm is True and seen["options"].exclude == ["*/a/*", "*/b/*"]
    assert "--include-bmm is now --quantize-bmm" in r.stderr
    # the new names: no note; qat's --exclude '' still means "nothing in float"
    seen = _record(monkeypatch, "bertopt.qat.stage.run_qat")
    monkeypatch.setattr(params, "_NOTED", set())
    r = CliRunner().invoke(app, ["qat", "m", "-o", "o", "--data", "d.csv", "--label-column", "y", "--samples", "3", "--exclude", ""])
    assert r.exit_code == 0 and "note:" not in r.stderr
    o = seen["options"]
    assert o.label_column == "y" and o.samples == 3 and o.exclude == []


def test_old_recipe_keys_still_work_with_a_note(tmp_path, capsys, monkeypatch):
    import bertopt.params as params

    monkeypatch.setattr(params, "_NOTED", set())
    (tmp_path / "d.csv").write_text("text,label\na,0\nb,1\n")
    r = tmp_path / "r.yaml"
    r.write_text(textwrap.dedent("""\
        model: some-model
        steps:
          - stage: calibrate
            input: model
            data: d.csv
            include_bmm: true
          - stage: qat
            input: model
            data: d.csv
            labels_column: label
            limit: 2
            warmup: 0.05
    """))
    steps = recipe.load_recipe(r)["steps"]
    assert steps[0]["options"]["quantize_bmm"] is True and "include_bmm" not in steps[0]["options"]
    assert {k: steps[1]["options"][k] for k in ("label_column", "samples", "warmup_ratio")} == {"label_column": "label", "samples": 2, "warmup_ratio": 0.05}
    err = capsys.readouterr().err
    assert "steps[1] (qat): 'labels_column' is now 'label_column'" in err and "'include_bmm' is now 'quantize_bmm'" in err
    # both spellings at once is an error naming the field
    r.write_text(r.read_text().replace("limit: 2", "limit: 2\n    samples: 3"))
    with pytest.raises(Exception, match=r"steps\[1\] \(qat\)\.limit: both 'limit' \(the old name\) and 'samples'"):
        recipe.load_recipe(r)


def test_old_python_keywords_still_work(capsys, monkeypatch):
    import bertopt.params as params

    for name in RENAMED:  # the stages map the old keywords through their options class
        assert not set(RENAMED[name]) & set(_stage_params(name))
        cls = stages.options(name)
        monkeypatch.setattr(params, "_NOTED", set())
        for old, new in RENAMED[name].items():
            value = {"label_column": "y", "samples": 4, "warmup_ratio": 0.25}.get(new, True)
            assert getattr(cls.parse(_required(name) | {old: value}), new) == value
            assert f"run_{name}: {old}= is now {new}=" in capsys.readouterr().err
            with pytest.raises(BertoptError, match=f"both '{old}=' \\(the old name\\) and '{new}='"):
                cls.parse(_required(name) | {old: value, new: value})


def test_recipes_use_the_current_names():
    old = {k for m in RENAMED.values() for k in m}
    for f in Path(__file__).resolve().parents[1].glob("recipes/*.yaml"):
        keys = set(re.findall(r"^\s+-?\s*(\w+):", f.read_text(), flags=re.M))
        assert not keys & old, f"{f.name} uses old keys {keys & old}"


PLAIN = """
import time
from bertopt import ui
with ui.progress() as p:
    t = p.add_task("demo: collect", total=4, status="")
    for _ in range(4):
        time.sleep(0.3)
        p.advance(t)
with ui.console.status("demo: a long step"):
    time.sleep(0.5)
"""


def test_plain_progress_lines_when_stderr_is_not_a_terminal():
    env = {"BERTOPT_PROGRESS_EVERY": "0.2", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    import os

    p = subprocess.run([sys.executable, "-c", PLAIN], capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    bar = [line for line in lines if line.startswith("demo: collect ")]
    assert len(bar) >= 3, lines  # periodic, not only at the end
    assert re.fullmatch(r"demo: collect 4/4 \(100%\) 0:0\d", bar[-1]), bar[-1]
    assert "demo: a long step" in lines and any(re.fullmatch(r"demo: a long step \.\.\. 0:0\d", x) for x in lines), lines
    q = subprocess.run([sys.executable, "-c", PLAIN.replace("from bertopt import ui", "from bertopt import ui; ui.set_quiet()")],
                       capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert q.returncode == 0 and q.stderr == ""


def test_a_stage_prints_progress_lines_in_ci_and_nothing_with_quiet(exported_minilm, tmp_path):
    env = {"BERTOPT_PROGRESS_EVERY": "0.05"}
    r = run_cli("fuse", str(exported_minilm), "-o", str(tmp_path / "fuse"), env=env)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^fuse \(onnxruntime\) \d+/\d+ \(100%\) \d+:\d\d", r.stderr, flags=re.M), r.stderr
    again = run_cli("fuse", str(exported_minilm), "-o", str(tmp_path / "fuse"), env=env)
    assert again.returncode == 0 and "is up to date" in again.stderr
    for args in (["fuse", "-q"], ["-q", "fuse"]):
        q = run_cli(*args, str(exported_minilm), "-o", str(tmp_path / "fuse"), env=env)
        assert q.returncode == 0 and q.stderr == "", q.stderr
        assert "MultiHeadAttention" in q.stdout or "attention" in q.stdout.lower()  # the result still prints


def test_verbose_is_the_loggers_level_set_once_per_command(tmp_path):
    """-v sets bertopt.log's level when the command starts (and a command without -v resets it); a debug
    line prints only then, on the same stderr console and in the same plain form as a note."""
    from bertopt import log, ui

    missing = str(tmp_path / "nothing-here")
    for args, want in ((["fuse", missing, "-o", str(tmp_path / "o"), "-v"], True), (["fuse", missing, "-o", str(tmp_path / "o")], False)):
        r = CliRunner().invoke(app, args)
        assert r.exit_code != 0 and isinstance(r.exception, BertoptError)  # the stage ran (and refused the input)
        assert log.verbose() is want
    try:
        with ui.console.capture() as quiet:
            log.logger.debug("fuse: [x] fired 0 times")
        log.set_verbose()
        with ui.console.capture() as loud:
            log.logger.debug("fuse: [x] fired 0 times")
            ui.note("fuse: [x] fired 0 times")
    finally:
        log.set_verbose(False)
    assert quiet.get() == "" and loud.get() == "fuse: [x] fired 0 times\n" * 2


@pytest.mark.parametrize("where, kwargs, message", [
    (None, {"epochs": 0}, "run_qat: epochs=0: must be greater than 0"),
    ("cli", {"val_fraction": 1.5}, "qat --val-fraction: must be less than 1 (got 1.5)"),
    ("r.yaml: steps[1] (qat)", {"lr": "-1"}, "r.yaml: steps[1] (qat).lr: must be greater than 0 (got '-1')"),
    ("r.yaml: steps[1] (qat)", {"start": "min"}, "r.yaml: steps[1] (qat).start: must be 'calibrate' or 'max' (got 'min')"),
    ("r.yaml: steps[1] (qat)", {"data": None, "dat": "x.csv"}, "r.yaml: steps[1] (qat).dat: unknown option for stage 'qat'"),
    (None, {"output_weight": 0, "hidden_weight": 0}, "at least one distillation weight positive"),
    ("r.yaml: steps[1] (qat)", {"eval": "x.csv"}, "r.yaml: steps[1] (qat): qat: --eval is the held-out text of a budget"),
])
def test_a_bad_option_is_one_error_naming_the_field_as_written(where, kwargs, message):
    from bertopt.qat.options import QatOptions

    given = {k: v for k, v in ({"data": "d.csv"} | kwargs).items() if v is not None}
    with pytest.raises(BertoptError) as e:
        QatOptions.parse(given, where=where)
    assert message in e.value.message and e.value.hint


def test_options_objects_are_frozen_and_convert_values():
    from bertopt.compress.options import CompressOptions
    from bertopt.qat.options import QatOptions

    o = QatOptions.parse({"data": "d.csv", "lr": "2e-5", "dropout": "false", "samples": "64"})
    assert o.lr == 2e-5 and o.dropout is False and o.samples == 64
    with pytest.raises(Exception):
        o.lr = 1.0  # one object, read by the CLI, the recipe runner and the manifest: never changed on the way
    c = CompressOptions.parse({"data": "d.csv"})  # compress keeps its own defaults of the shared training options
    assert (c.epochs, c.lr, o.epochs) == (3.0, 1e-4, 1.0)
    assert CompressOptions.model_fields["epochs"].description == QatOptions.model_fields["epochs"].description
