"""``run_build(backend="onnxruntime")``: the offline-optimized graph + the session options it runs with."""

from __future__ import annotations

from pathlib import Path

from bertopt.artifacts import MODEL_FILE, Artifact, load_artifact, up_to_date, write_artifact
from bertopt.backends.hf_folder import write_hf_folder
from bertopt.backends.options import BuildOptions
from bertopt.errors import BertoptError
from bertopt.log import logger, verbose
from bertopt.ui import note, skipped


def build_stage(art: Artifact, src: Path, out: Path, o: BuildOptions, data_path: Path | None, *, force: bool) -> Artifact:
    """ORT keeps the graph's own precision (Q/DQ -> int8) and only checks ``o.precision`` against it."""
    from bertopt.backends import onnxruntime as ortb
    from bertopt.backends.stage import graph_inputs, stage_inputs, text_feeds
    from bertopt.graph import precision

    detected = precision(src)
    if o.precision is not None and o.precision != detected:
        raise BertoptError(
            f"{src}: the graph is {detected}, but --precision {o.precision} was asked for",
            hint=("ONNX Runtime runs the graph's own precision: for int8 run `bertopt calibrate` (or qat) first"
                  if o.precision == "int8" else "drop --precision, or build from an artifact of that precision"),
        )
    inputs = stage_inputs(art, src, data_path)
    params = {"backend": "onnxruntime", "precision": detected, "threads": o.threads, "tune": o.tune, "short_calls": o.short_calls,
              "data": str(data_path) if data_path else None, "text_column": o.text_column}
    if (done := up_to_date(out, "build", inputs, params, force)) is not None:
        skipped("build", out)
        return done

    input_names = list(art.model_info.get("inputs") or graph_inputs(src))
    tuning, tune_texts = None, o.tune and data_path is not None
    if tune_texts:
        tuning = ortb.Tuning(text_feeds(art, data_path, o.text_column, input_names, seq=128, batches=(1, 8)))
    elif o.tune:
        tuning = ortb.Tuning.synthetic(input_names)
    from bertopt.ui import console

    with write_artifact(out, "build", inputs, params) as w:
        w.add_output("model", MODEL_FILE)
        w.add_output("session", ortb.SESSION_FILE)
        with console.status("build: onnxruntime") as status, w.timed("build"):
            decision = ortb.build_onnxruntime(src, w.dir, threads=o.threads, tuning=tuning, progress=lambda m: status.update(f"build: {m}"),
                                                short_calls=o.short_calls)
        if (w.dir / (MODEL_FILE + ".data")).is_file():
            w.add_output("model_data", MODEL_FILE + ".data")
        w.copy_tokenizer(art.tokenizer_dir)
        w.model = dict(art.model_info)
        write_hf_folder(w, w.model)  # sentence-transformers / Optimum / pipelines load the folder as it is
        w.extra["build"] = {
            "backend": "onnxruntime",
            "precision": detected,
            "machine": {"cpu": ortb.cpu_name(), "physical_cores": ortb.physical_cores()},
            "tune_texts": str(data_path) if tune_texts else None,
            **decision,
        }
    _report(out, detected, decision)
    return load_artifact(out)


def _report(out: Path, precision: str, d: dict) -> None:
    cfg = d["session"]
    entries = ", ".join(f"{k}={v}" for k, v in cfg.get("session_config_entries", {}).items()) or "defaults"
    note(f"build: {out / MODEL_FILE}  backend=onnxruntime precision={precision} offline={d['offline_optimization']} "
         f"threads={cfg.get('intra_op_num_threads', 'ORT default')} entries: {entries}")
    sc = d.get("short_calls") or {}
    if sc.get("measured"):
        lat = sc["latency_ms"]
        rows = "  ".join(f"{k}: " + "/".join(f"{s} {v:.2f}" for s, v in d2.items()) + " ms" for k, d2 in lat.items())
        note(f"build: short calls (batch 1, tokens) {rows}")
    if sc:
        route = (f"calls of at most {sc['max_tokens']} tokens go to a 1-thread session" if sc["max_tokens"] else "one session for every call")
        note(f"build: short calls: {route} ({sc['why']})")
        load = sc.get("load_average") or {}
        if (load.get("before") or 0) > load.get("cores", 1):
            note(f"build: the machine was busy while timing short calls (load {load['before']} on {load['cores']} cores): a busy "
                 "machine favours 1 thread; rebuild on the machine state you deploy to, or pass --short-calls N / off")
    if d.get("tuned"):
        conf = d["confirm"]["latency_ms"]
        rows = "  ".join(f"{k}: " + "/".join(f"b{b} {v:.1f}" for b, v in lat.items()) + " ms" for k, lat in conf.items())
        note(f"build: measured (interleaved) {rows}; chose '{d['chosen']}'")
        load = d.get("load_average") or {}
        if (load.get("before") or 0) > load.get("cores", 1):
            note(f"build: the machine was busy while measuring (load {load['before']} on {load['cores']} cores): the choice "
                 "reflects that; re-run --tune on the machine state you deploy to")
    if verbose():
        before, after = d["ops_before"], d["ops_after"]
        changed = {k: (before.get(k, 0), after.get(k, 0)) for k in sorted(set(before) | set(after)) if before.get(k, 0) != after.get(k, 0)}
        logger.debug("build: ORT offline optimization changed op counts: " + (", ".join(f"{k} {a}->{b}" for k, (a, b) in changed.items()) or "nothing"))
