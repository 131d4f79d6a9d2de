"""``bertopt inspect ARTIFACT``: what an artifact is, where it came from, what runs in INT8, how it measured.

Everything is read from the artifact's files: its ``manifest.json`` (and those of its inputs, walked
back to the base model, each input's recorded sha256 checked against what is on disk now), the ONNX
graph (op counts, GEMM precision, I/O), ``session.json`` (ONNX Runtime builds), the engine profiles
(TensorRT builds), and the newest bench artifact beside it that measured it.
"""

from __future__ import annotations

import json
from pathlib import Path

from bertopt.errors import BertoptError
from bertopt.graph import GEMM_OPS, INT8_GEMM_OPS

SCHEMA = "bertopt.inspect/1"
# manifest metrics worth a line in the lineage (the rest is in --json)
FLOAT_COMPUTE = {"LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization", "Gelu", "FastGelu", "BiasGelu", "Erf", "Tanh",
                 "MultiHeadAttention", "Attention", "Softmax", "Gather"}
KEY_METRICS = ("parity", "fidelity", "quantized_gemms", "candidate_gemms", "cosine_min", "accuracy", "accuracy_drop", "int8_gemm_bias_folded")


def graph_summary(model_path: Path) -> dict:
    """Op counts, I/O names/shapes, and the GEMMs: how many run INT8 (Q/DQ-fed or integer kernels),
    which weight GEMMs stay float, and the activation x activation matmuls (attention) apart."""
    import onnx

    from bertopt.graph import INT8_OPS, opset_version, precision

    m = onnx.load(str(model_path), load_external_data=False)
    g = m.graph
    inits = {t.name for t in g.initializer}
    ops, float_compute, weight, bmm = _count_ops(g, inits)
    return {
        "file": model_path.name,
        "bytes": model_path.stat().st_size,
        "opset": opset_version(m) or None,
        "nodes": len(g.node),
        "inputs": _io([i for i in g.input if i.name not in inits]),
        "outputs": _io(g.output),
        "gemms": weight,
        "attention_matmuls": bmm,
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "float_compute": float_compute,
        "int8_ops": {k: v for k, v in ops.items() if k.split("::")[-1] in INT8_OPS},
        "precision": precision(m),
    }


def _count_ops(g, inits: set[str]) -> tuple[dict, dict, dict, dict]:
    """Op counts, float compute op counts, weight GEMMs (total, INT8, names of the float ones) and
    activation x activation matmuls (total, INT8) of graph ``g``."""
    from bertopt.graph import op_key

    producer = {o: n for n in g.node for o in n.output}
    consts = inits | {o for n in g.node if n.op_type == "Constant" for o in n.output}

    def from_weight(name: str, depth: int = 0) -> bool:
        if name in consts:
            return True
        n = producer.get(name)
        if n is None or depth > 3 or n.op_type not in ("DequantizeLinear", "Transpose", "Cast", "Reshape"):
            return False
        return from_weight(n.input[0], depth + 1)

    def dq_fed(name: str) -> bool:
        n = producer.get(name)
        return n is not None and n.op_type == "DequantizeLinear"

    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    ops: dict[str, int] = {}
    float_compute: dict[str, int] = {}
    weight = {"total": 0, "int8": 0, "float": []}
    bmm = {"total": 0, "int8": 0}
    for n in g.node:
        key = op_key(n)
        ops[key] = ops.get(key, 0) + 1
        if n.op_type in FLOAT_COMPUTE:
            float_compute[n.op_type] = float_compute.get(n.op_type, 0) + 1
        if n.op_type in INT8_GEMM_OPS:
            # build runs Q/K/V as one GEMM + Split: count the GEMMs it stands for
            r = readers.get(n.output[0], [])
            k = len(r[0].output) if len(r) == 1 and r[0].op_type == "Split" else 1
            weight["total"] += k
            weight["int8"] += k
        elif n.op_type in GEMM_OPS:
            is_weight = any(from_weight(i) for i in n.input[:2])
            int8 = all(dq_fed(i) for i in n.input[:2])
            if not int8:
                float_compute["MatMul (float)"] = float_compute.get("MatMul (float)", 0) + 1
            if is_weight:
                weight["total"] += 1
                weight["int8"] += int8
                if not int8:
                    weight["float"].append(n.name or n.output[0])
            else:
                bmm["total"] += 1
                bmm["int8"] += int8
    return ops, float_compute, weight, bmm


def _io(values) -> list[dict]:
    """Name, dtype and shape (symbolic dims by name, unknown ones as '?') of graph inputs or outputs."""
    import onnx

    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
        out.append({"name": v.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower(), "shape": dims})
    return out


def _input_status(entry: dict, resolved: Path | None) -> str:
    from bertopt.artifacts import MANIFEST, describe_input, load_artifact

    if resolved is None or not resolved.exists():
        return "missing"
    try:
        if (resolved / MANIFEST).is_file():
            load_artifact(resolved, verify=True)  # an artifact's identity is its manifest: check its files too
        return "ok" if describe_input(resolved)["sha256"] == entry.get("sha256") else "changed"
    except BertoptError:
        return "changed"
    except OSError:
        return "unreadable"


def lineage(art) -> list[dict]:
    """This artifact, then its ``model`` input's artifact, and so on back to the base model: each
    stage's parameters and key metrics, and every input with its recorded sha256 and whether the file
    on disk still has it (ok | changed | missing)."""
    from bertopt.artifacts import MANIFEST, input_path, load_artifact

    chain, seen = [], set()
    cur = art
    while cur is not None and str(cur.path.resolve()) not in seen:
        seen.add(str(cur.path.resolve()))
        m = cur.manifest
        entry = {"stage": m.get("stage"), "path": str(cur.path), "created": m.get("created"), "params": m.get("params", {}),
                 "metrics": {k: m.get("metrics", {})[k] for k in KEY_METRICS if k in m.get("metrics", {})}, "inputs": {}}
        nxt = None
        for key, inp in (m.get("inputs") or {}).items():
            p = input_path(cur, key)
            entry["inputs"][key] = {"path": inp.get("path"), "resolved": str(p) if p else None, "sha256": inp.get("sha256"),
                                    "status": _input_status(inp, p)}
            if key == "model" and p is not None and (p / MANIFEST).is_file():
                nxt = load_artifact(p, verify=False)
            elif key == "model" and p is not None:
                entry["base_model"] = {"path": str(p), "sha256": inp.get("sha256"), "status": entry["inputs"][key]["status"]}
        chain.append(entry)
        cur = nxt
    return chain


def last_measured(art) -> dict | None:
    """The newest bench artifact in the same folder as ``art`` that measured it (matched by the
    input identity its manifest recorded, so renamed or copied folders still match)."""
    from bertopt.artifacts import MANIFEST, describe_input, read_manifest

    me = describe_input(art.path)["sha256"]
    best = None
    for d in sorted(art.path.parent.iterdir()) if art.path.parent.is_dir() else []:
        mf = d / MANIFEST
        if d == art.path or not mf.is_file():
            continue
        try:
            m = read_manifest(mf)
        except BertoptError:
            continue  # a sibling that is no artifact does not keep this one from being described
        if m.get("stage") != "bench":
            continue
        idx = [int(k[5:]) for k, v in (m.get("inputs") or {}).items() if k.startswith("input") and k[5:].isdigit() and v.get("sha256") == me]
        rp = d / "report.json"
        if not idx or not rp.is_file():
            continue
        if best is None or (m.get("created") or "") > best[0]:
            best = (m.get("created") or "", d, idx[0], rp)
    if best is None:
        return None
    created, d, i, rp = best
    try:
        rep = json.loads(rp.read_text())
        run = rep["runs"][i]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None  # a bench report of another shape: nothing measured that can be shown
    return {"bench": str(d), "created": created, "reference": rep.get("reference"), "name": run.get("name"), "threads": rep.get("threads"),
            "cpu": (rep.get("host") or {}).get("cpu"),
            "latency": [{"batch": r["batch"], "seq": r["seq"], "p50_ms": r["latency_ms"]["p50"], "throughput": r["throughput"],
                         "speedup": r.get("speedup")} for r in run.get("results", []) if "latency_ms" in r],
            "real": [x for x in run.get("real") or [] if "skipped" not in x],
            "fidelity": run.get("fidelity"), "accuracy": run.get("accuracy"), "gates": rep.get("gates")}


def inspect_artifact(path: str | Path) -> dict:
    from bertopt.artifacts import MANIFEST, load_artifact
    from bertopt.models import is_hf_folder
    from bertopt.paths import resolve_path

    p = resolve_path(path)
    if not p.exists():
        raise BertoptError(f"{p}: no such file or folder", hint="pass an artifact folder written by a bertopt stage, a .onnx file, or a Hugging Face folder")
    if p.is_dir() and not (p / MANIFEST).is_file() and is_hf_folder(p):
        return _inspect_hf(p)
    if p.is_dir() and not (p / MANIFEST).is_file() and any((d / MANIFEST).is_file() for d in p.iterdir()):
        return _inspect_folder(p)
    art = load_artifact(p, verify=False)
    m = art.manifest
    res: dict = {"schema": SCHEMA, "path": str(art.path), "kind": "artifact" if (art.path / MANIFEST).is_file() and p.is_dir() else "onnx",
                 "stage": art.stage, "created": m.get("created"), "bertopt_version": m.get("bertopt_version"),
                 "fingerprint": m.get("fingerprint"), "tools": m.get("tools"), "model": m.get("model", {}), "params": m.get("params", {}),
                 "metrics": m.get("metrics", {}), "outputs": {}, "integrity": "ok"}
    try:
        load_artifact(p, verify=True)
    except BertoptError as e:
        res["integrity"] = e.message
    for key, entry in (m.get("outputs") or {}).items():
        rel = entry["path"] if isinstance(entry, dict) else entry
        f = art.path / rel
        res["outputs"][key] = {"path": rel, "bytes": f.stat().st_size if f.is_file() else None,
                               "sha256": entry.get("sha256") if isinstance(entry, dict) else None}
    build = m.get("build") or {}
    res["build"] = build or None
    if art.stage == "bench":
        rp = art.path / "report.json"
        rep = json.loads(rp.read_text()) if rp.is_file() else {}
        res["bench"] = {"runs": [r.get("name") for r in rep.get("runs", [])], "gates": rep.get("gates"), "created": rep.get("created")}
        res["summary"] = f"bench report of {len(rep.get('runs', []))} artifacts"
        res["lineage"] = lineage(art)
        return res
    _inspect_graph(res, art, build)
    from bertopt.backends.onnxruntime import load_session_config

    res["session"] = load_session_config(art.path)
    res["lineage"] = lineage(art) if (art.path / MANIFEST).is_file() else []
    res["measured"] = last_measured(art) if (art.path / MANIFEST).is_file() else None
    res["precision"] = build.get("precision") or _precision(res.get("graph"))
    res["summary"] = _summary(res, art.stage, build.get("backend") or "onnxruntime")
    return res


def _inspect_hf(p: Path) -> dict:
    """A Hugging Face model folder: its config's summary and the folder's sha256."""
    from bertopt.artifacts import sha256_path
    from bertopt.models import default_task, model_summary, read_config

    cfg = read_config(p)
    return {"schema": SCHEMA, "path": str(p), "kind": "hf-model", "stage": "hf", "model": model_summary(cfg, default_task(cfg)),
            "sha256": sha256_path(p), "summary": f"Hugging Face model folder ({cfg.get('model_type')}), runs on PyTorch"}


def _inspect_graph(res: dict, art, build: dict) -> None:
    """``res['graph']`` (and ``engine``, ``graph_from``): the artifact's ONNX graph, or for a TensorRT
    engine the graph it was built from."""
    from bertopt.artifacts import MANIFEST, load_artifact

    model_file = None
    try:
        model_file = art.model_path
    except BertoptError:
        pass
    graph_src = model_file if model_file is not None and model_file.suffix == ".onnx" and model_file.is_file() else None
    if build.get("backend") == "tensorrt":
        res["engine"] = {"precision": build.get("precision"), "profiles": build.get("profiles"), "file": model_file.name if model_file else None}
    elif build.get("backend") == "openvino":
        res["engine"] = {"precision": build.get("precision"), "buckets": build.get("buckets"), "openvino": build.get("openvino"),
                         "inference_precision": build.get("inference_precision"), "int8_gemms": build.get("int8_gemms"),
                         "file": model_file.name if model_file else None}
    if graph_src is None and res.get("engine"):
        # the engine is opaque without TensorRT: describe the ONNX graph it was built from
        from bertopt.artifacts import input_path

        src = input_path(art, "model")
        if src is not None and (src / MANIFEST).is_file():
            try:
                graph_src = load_artifact(src, verify=False).model_path
                res["graph_from"] = str(src)
            except BertoptError:
                graph_src = None
    if graph_src is not None and graph_src.is_file():
        try:
            res["graph"] = graph_summary(graph_src)
        except Exception as e:  # noqa: BLE001 - an unreadable model is reported, not fatal for inspect
            res["graph"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}


def _summary(res: dict, stage: str, backend: str) -> str:
    """'INT8 ONNX model from stage 'calibrate' (BertModel, feature-extraction, mean pooling, normalized)'."""
    info = res["model"]
    pool = info.get("pooling")
    kind = {"tensorrt": "TensorRT engine", "openvino": "OpenVINO IR"}.get(backend, "ONNX model")
    return (f"{res['precision'].upper()} {kind} from stage '{stage}'"
            f" ({info.get('architecture', '?')}, {info.get('task', '?')}"
            + (f", {pool} pooling" + (", normalized" if info.get("normalize") else "") if pool and pool != "none" else "") + ")")


def _inspect_folder(p: Path) -> dict:
    """A folder of artifacts (a recipe's workdir): each one's stage and integrity; one that cannot be
    read is listed with its error and does not hide the others."""
    from bertopt.artifacts import MANIFEST, load_artifact

    arts, bad = [], 0
    for d in sorted(q for q in p.iterdir() if (q / MANIFEST).is_file()):
        try:
            art = load_artifact(d, verify=False)
        except BertoptError as e:
            arts.append({"path": str(d), "stage": None, "integrity": e.message})
            bad += 1
            continue
        try:
            load_artifact(d, verify=True)
            integrity = "ok"
        except BertoptError as e:
            integrity, bad = e.message, bad + 1
        info = art.model_info
        arts.append({"path": str(d), "stage": art.stage, "created": art.manifest.get("created"), "task": info.get("task"),
                     "architecture": info.get("architecture"), "integrity": integrity})
    return {"schema": SCHEMA, "path": str(p), "kind": "folder", "artifacts": arts,
            "integrity": "ok" if not bad else f"{bad} of {len(arts)} artifacts in {p} failed their checks (listed above)",
            "summary": f"folder of {len(arts)} artifacts" + (f", {bad} failed their checks" if bad else "")}


def _precision(graph: dict | None) -> str:
    if not graph or "gemms" not in graph:
        return "?"
    return graph.get("precision", "?")


def _short(params: dict, limit: int = 8) -> str:
    bits = []
    for k, v in params.items():
        if v is None or v == [] or v == {}:
            continue
        bits.append(f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}")
    return " ".join(bits[:limit]) + (f" (+{len(bits) - limit} more)" if len(bits) > limit else "")


def _metric_line(metrics: dict) -> str:
    bits = []
    par = metrics.get("parity")
    if isinstance(par, dict) and "max_abs_diff" in par:
        bits.append(f"parity max|diff| {par['max_abs_diff']:.1e}")
    fid = metrics.get("fidelity")
    if isinstance(fid, dict) and "cosine_min" in fid:
        bits.append(f"{fid.get('output', 'output')} cosine vs FP32 min {fid['cosine_min']:.5f} mean {fid.get('cosine_mean', 0):.5f} (n={fid.get('n')})")
    if "quantized_gemms" in metrics:
        bits.append(f"{metrics['quantized_gemms']}/{metrics.get('candidate_gemms', '?')} GEMMs INT8")
    if isinstance(metrics.get("accuracy"), (int, float)):
        bits.append(f"accuracy {metrics['accuracy']:.4f}")
    return "; ".join(bits)


def render(res: dict) -> None:
    from bertopt.ui import stdout

    def line(s: str = "") -> None:
        stdout.print(s, markup=False, highlight=False)

    line(f"{res['path']}: {res.get('summary', res.get('kind'))}")
    if res.get("kind") == "hf-model":
        line(f"  sha256 {res['sha256'][:16]}  model {_short(res['model'])}")
        return
    if res.get("kind") == "folder":
        for a in res["artifacts"]:
            state = "ok" if a["integrity"] == "ok" else f"FAILED: {a['integrity']}"
            line(f"  {a['stage'] or '?':<10} {Path(a['path']).name}  {a.get('created') or ''}  {state}")
        return
    line(f"  created {res.get('created')}  bertopt {res.get('bertopt_version')}  fingerprint {str(res.get('fingerprint'))[:16]}"
         + ("" if res.get("integrity") == "ok" else f"  INTEGRITY: {res['integrity']}"))
    _render_lineage(line, res)
    _render_graph(line, res)
    if res.get("session"):
        line("session: " + _short(res["session"], 10))
    _render_measured(line, res)


def _render_lineage(line, res: dict) -> None:
    if res.get("lineage"):
        line("lineage (this artifact first, back to the base model):")
        for e in res["lineage"]:
            ins = ", ".join(f"{k} {v['status']}" for k, v in e["inputs"].items())
            line(f"  {e['stage']:<10} {e['path']}  [{ins}]")
            if e["params"]:
                line(f"  {'':<10} {_short(e['params'])}")
            if (ml := _metric_line(e["metrics"])):
                line(f"  {'':<10} {ml}")
            if "base_model" in e:
                b = e["base_model"]
                line(f"  {'base':<10} {b['path']}  sha256 {str(b['sha256'])[:16]} ({b['status']})")


def _render_graph(line, res: dict) -> None:
    g = res.get("graph")
    if g and "gemms" in g:
        gm, bm = g["gemms"], g["attention_matmuls"]
        src = f" (of the ONNX it was built from: {res['graph_from']})" if res.get("graph_from") else ""
        line(f"graph{src}: {g['file']} opset {g['opset']}, {g['nodes']} nodes, {g['bytes'] / 1e6:.1f} MB")
        line(f"  GEMMs: {gm['int8']} of {gm['total']} INT8" + (f"; float: {', '.join(gm['float'][:6])}" + (" ..." if len(gm['float']) > 6 else "") if gm["float"] else "")
             + (f"; attention matmuls {bm['int8']} of {bm['total']} INT8" if bm["total"] else ""))
        if g.get("float_compute"):
            line("  stays float: " + ", ".join(f"{k} {v}" for k, v in g["float_compute"].items()))
        line("  ops: " + ", ".join(f"{k} {v}" for k, v in list(g["ops"].items())[:12]) + (" ..." if len(g["ops"]) > 12 else ""))
        for kind in ("inputs", "outputs"):
            line(f"  {kind}: " + "; ".join(f"{i['name']} {i['dtype']} [{', '.join(map(str, i['shape']))}]" for i in g[kind]))
    if res.get("engine"):
        e = res["engine"]
        if "buckets" in e:
            line(f"openvino: {e.get('file')} ({e.get('openvino')}) precision {e.get('precision')}, {e.get('int8_gemms')} INT8 GEMM layers, "
                 f"float ops {e.get('inference_precision')}; shapes: " + (", ".join(e["buckets"]) + " (others dynamic)" if e.get("buckets") else "dynamic"))
        else:
            line(f"engine: {e.get('file')} precision {e.get('precision')}; profiles: "
                 + "; ".join(f"batch {p.get('batch')} seq {p.get('seq')}" for p in e.get("profiles") or []))


def _render_measured(line, res: dict) -> None:
    meas = res.get("measured")
    if meas:
        line(f"last measured: {meas['bench']} ({meas['created']}, {meas['threads']} threads, {meas.get('cpu') or '?'}), as '{meas['name']}':")
        for r in meas["latency"]:
            line(f"  batch {r['batch']} x seq {r['seq']}: p50 {r['p50_ms']:.2f} ms, {r['throughput']:.1f} seq/s"
                 + (f", {r['speedup']:.2f}x vs {meas['reference']}" if r.get("speedup") else ""))
        for x in meas["real"]:
            line(f"  real lengths, batch {x['batch']}: {x['sequences_per_s']:.1f} seq/s, {x['tokens_per_s']:.0f} tokens/s")
        f = meas.get("fidelity") or {}
        if f.get("cosine_min") is not None:
            line(f"  fidelity vs {meas['reference']}: {f.get('compared')} cosine min {f['cosine_min']:.5f} mean {f['cosine_mean']:.5f} (n={f.get('n')})")
        if meas.get("accuracy"):
            line(f"  accuracy {meas['accuracy']['value']:.4f} (n={meas['accuracy']['n']})")
        if meas.get("gates"):
            line(f"  gates: {'passed' if meas['gates']['passed'] else 'FAILED'}")
    elif res.get("stage") != "bench":
        line("last measured: no bench artifact beside it measured this artifact (bertopt bench ... -o DIR next to it)")
