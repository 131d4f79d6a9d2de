"""``bertopt build ... --triton REPO``: a Triton Inference Server model repository from a build artifact.

    REPO/<name>/config.pbtxt
    REPO/<name>/1/<model file>          # a hard link to the artifact's file (a copy across file systems)

The config is written from backend-neutral facts (:class:`TritonModel`: the model file, the graph's
inputs/outputs with dtypes and dims, the largest batch, instances, threads), which each backend fills
from its artifact: ONNX Runtime from the graph and ``session.json`` (threads, graph optimization level,
arena), TensorRT from the ONNX the engine was built from and its optimization profiles (the largest
batch, the profiles each instance may pick from), so no engine and no GPU are needed to write it.
Requests are batched by Triton's dynamic batcher up to ``max_batch_size``. The repository takes token
ids (``input_ids``, ``attention_mask``[, ``token_type_ids``]): the client tokenizes with the tokenizer
in the build folder.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bertopt.artifacts import Artifact, link_or_copy, sha256_file
from bertopt.errors import BertoptError

CONFIG = "config.pbtxt"
VERSION = "1"
QUEUE_DELAY_US = 100  # how long the dynamic batcher may hold a request to fill a batch
CPU_MAX_BATCH = 32  # ONNX Runtime and OpenVINO take any batch: the largest batch of TensorRT's default profile
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
SOURCE = re.compile(r"# written by bertopt from (.+) \(build [^()]*\)")

TRITON_TYPES = {"bool": "TYPE_BOOL", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float32": "TYPE_FP32", "float64": "TYPE_FP64"}
ONNX_TYPES = {"FLOAT": "float32", "DOUBLE": "float64"}  # else TensorProto's name, lower case
# Triton's backend name -> (platform, the model parameter that sets the intra-op threads, instance kind)
BACKENDS = {
    "onnxruntime": (None, "intra_op_thread_count", "KIND_CPU"),
    "tensorrt": ("tensorrt_plan", None, "KIND_GPU"),
    "openvino": (None, "INFERENCE_NUM_THREADS", "KIND_CPU"),
}
# session.json's graph_optimization_level -> Triton's onnxruntime ``optimization { graph { level } }``
ORT_GRAPH_LEVELS = {"ORT_ENABLE_BASIC": -1, "ORT_ENABLE_EXTENDED": 1, "ORT_DISABLE_ALL": 2}


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # numpy's name: int64, float32, float16, ...
    dims: tuple[int, ...]  # without the batch axis; -1 = any size


@dataclass
class TritonModel:
    """What a Triton config says about one model, whatever the backend."""

    backend: str  # Triton's backend: onnxruntime | tensorrt
    model_file: str  # the file in REPO/<name>/1/
    inputs: list[Tensor]
    outputs: list[Tensor]
    max_batch_size: int
    instances: int = 1
    threads: int | None = None
    preferred_batch_sizes: list[int] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)  # TensorRT: the optimization profiles an instance may use
    parameters: dict[str, str] = field(default_factory=dict)  # backend-specific model parameters
    graph_level: int | None = None  # onnxruntime: optimization { graph { level } }
    notes: list[str] = field(default_factory=list)  # comment lines at the top of config.pbtxt


def config_pbtxt(name: str, m: TritonModel) -> str:
    """The model's ``config.pbtxt`` (protobuf text format of Triton's ``ModelConfig``)."""
    platform, threads_key, kind = BACKENDS[m.backend]
    lines = [f"# {n}" for n in m.notes]
    lines += [f'name: "{name}"', f'backend: "{m.backend}"']
    if platform:
        lines.append(f'platform: "{platform}"')
    lines += [f"max_batch_size: {m.max_batch_size}", f'default_model_filename: "{m.model_file}"']
    for key, tensors in (("input", m.inputs), ("output", m.outputs)):
        rows = [f'  {{ name: "{t.name}" data_type: {TRITON_TYPES[t.dtype]} dims: [ {", ".join(map(str, t.dims))} ] }}' for t in tensors]
        lines.append(f"{key} [\n" + ",\n".join(rows) + "\n]")
    profile = " profile: [ " + ", ".join(f'"{p}"' for p in m.profiles) + " ]" if m.profiles else ""
    lines.append(f"instance_group [ {{ count: {m.instances} kind: {kind}{profile} }} ]")
    if m.max_batch_size > 0:
        preferred = "".join(f" preferred_batch_size: {b}" for b in m.preferred_batch_sizes)
        lines.append(f"dynamic_batching {{{preferred} max_queue_delay_microseconds: {QUEUE_DELAY_US} }}")
    if m.graph_level is not None:
        lines.append(f"optimization {{ graph {{ level: {m.graph_level} }} }}")
    params = dict(m.parameters)
    if m.threads and threads_key:
        params = {threads_key: str(m.threads), **params}
    lines += [f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- facts per backend
def onnx_io(path: Path) -> tuple[list[Tensor], list[Tensor], bool]:
    """The graph's inputs and outputs without their batch axis, and whether every one is batched
    (a dynamic first axis); unbatched graphs keep their full dims and get ``max_batch_size: 0``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    try:  # resolves output dims the exporter left symbolic (the pooled embedding's width)
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - ops it does not know (ORT's contrib ops): keep the declared shapes
        pass
    g = model.graph
    inits = {t.name for t in g.initializer}
    vis = [v for v in g.input if v.name not in inits] + list(g.output)

    def dims(v) -> list[int]:
        return [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]

    batched = all(dims(v) and dims(v)[0] == -1 for v in vis)

    def tensor(v) -> Tensor:
        elem = onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)
        d = dims(v)
        return Tensor(v.name, ONNX_TYPES.get(elem, elem.lower()), tuple(d[1:] if batched else d))

    n_in = len(vis) - len(g.output)
    return [tensor(v) for v in vis[:n_in]], [tensor(v) for v in vis[n_in:]], batched


def onnxruntime_model(art: Artifact) -> TritonModel:
    """ONNX Runtime: the graph's I/O; threads, graph level and arena from ``session.json``; as many
    instances as the build machine's physical cores hold sessions of that many threads."""
    from bertopt.backends.onnxruntime import load_session_config, physical_cores

    inputs, outputs, batched = onnx_io(art.model_path)
    cfg = load_session_config(art.path) or {}
    threads = int(cfg.get("intra_op_num_threads") or physical_cores())
    cores = int((art.manifest.get("build", {}).get("machine") or {}).get("physical_cores") or physical_cores())
    params = {"inter_op_thread_count": str(cfg.get("inter_op_num_threads", 1)), "execution_mode": "0"}
    for key, name in (("enable_cpu_mem_arena", "enable_mem_arena"), ("enable_mem_pattern", "enable_mem_pattern")):
        if key in cfg:
            params[name] = "1" if cfg[key] else "0"
    notes = []
    if cfg.get("session_config_entries"):
        notes.append("session.json entries Triton's onnxruntime backend does not take: "
                     + ", ".join(f"{k}={v}" for k, v in cfg["session_config_entries"].items()))
    return TritonModel(backend="onnxruntime", model_file=art.model_path.name, inputs=inputs, outputs=outputs,
                       max_batch_size=CPU_MAX_BATCH if batched else 0, instances=max(1, cores // threads), threads=threads,
                       parameters=params, graph_level=ORT_GRAPH_LEVELS.get(cfg.get("graph_optimization_level")), notes=notes)


def tensorrt_model(onnx_path: Path, profiles: list, engine_file: str, tensorrt_version: str | None = None) -> TritonModel:
    """TensorRT: the I/O of the ONNX the engine was built from, and its profiles (``Profile`` objects):
    ``max_batch_size`` is the largest batch any profile takes, each profile's opt batch a preferred
    batch size, and every instance may use every profile (Triton picks by the request's shape)."""
    inputs, outputs, batched = onnx_io(onnx_path)
    max_batch = max(p.batch[2] for p in profiles)
    notes = [f"engine built with TensorRT {tensorrt_version}: serve it with the same TensorRT version (and GPU model)"] if tensorrt_version else []
    notes.append("profiles: " + "; ".join(p.spec() for p in profiles))
    return TritonModel(backend="tensorrt", model_file=engine_file, inputs=inputs, outputs=outputs,
                       max_batch_size=max_batch if batched else 0, preferred_batch_sizes=sorted({p.batch[1] for p in profiles}),
                       profiles=[str(i) for i in range(len(profiles))], notes=notes)


def openvino_io(xml: Path) -> tuple[list[Tensor], list[Tensor], bool]:
    """The IR's inputs and outputs (as :func:`onnx_io`), read with OpenVINO itself."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))

    def dims(port) -> list[int]:
        return [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]

    ports = list(model.inputs) + list(model.outputs)
    batched = all(dims(p) and dims(p)[0] == -1 for p in ports)

    def tensor(p) -> Tensor:
        d = dims(p)
        return Tensor(p.get_any_name(), p.get_element_type().to_dtype().name, tuple(d[1:] if batched else d))

    return [tensor(p) for p in model.inputs], [tensor(p) for p in model.outputs], batched


def openvino_model(art: Artifact) -> TritonModel:
    """OpenVINO: the IR's I/O; threads from the build, one stream and the latency hint per instance (as
    the build compiled it), as many instances as the build machine's cores hold."""
    from bertopt.backends.onnxruntime import physical_cores

    build = art.manifest.get("build") or {}
    inputs, outputs, batched = openvino_io(art.model_path)
    from bertopt.backends.openvino.compile import checked_properties

    props = checked_properties(build.get("compile_properties") or {}, None, str(art.path / "manifest.json"))
    threads = int(props["INFERENCE_NUM_THREADS"])
    notes = [f"IR converted with OpenVINO {str(build.get('openvino', '?')).split('-')[0]}; the build's compiled-shape cache stays "
             "in the build folder (Triton compiles the IR with dynamic shapes)"]
    if build.get("inference_precision", "f32") == "f32":
        notes.append("Triton's openvino backend takes no INFERENCE_PRECISION_HINT: on CPUs with bf16 its float ops may run in "
                     "bf16, where bertopt built and checked f32")
    return TritonModel(backend="openvino", model_file=art.model_path.name, inputs=inputs, outputs=outputs,
                       max_batch_size=CPU_MAX_BATCH if batched else 0, instances=max(1, physical_cores() // threads),
                       threads=threads, parameters={"NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}, notes=notes)


def model_for(art: Artifact) -> tuple[TritonModel, list[Path]]:
    """The Triton facts of a build artifact and the files that go into ``REPO/<name>/1/``."""
    build = art.manifest.get("build") or {}
    backend = build.get("backend")
    if backend == "onnxruntime":
        m = onnxruntime_model(art)
        files = [art.model_path] + ([art.output("model_data")] if "model_data" in art.manifest.get("outputs", {}) else [])
    elif backend == "tensorrt":
        from bertopt.backends.profiles import Profile

        profiles = [Profile.from_json(p) for p in build.get("profiles") or []]
        m = tensorrt_model(art.output("onnx"), profiles, art.model_path.name, build.get("tensorrt"))
        files = [art.model_path]
    elif backend == "openvino":
        m = openvino_model(art)
        files = [art.model_path, art.output("weights")]
    else:
        raise BertoptError(f"{art.path}: --triton takes a build artifact of backend onnxruntime, openvino or tensorrt (this one: {backend or art.stage})",
                           hint="build with --backend onnxruntime, openvino or tensorrt")
    m.notes.insert(0, f"written by bertopt from {art.path.resolve()} (build {backend}, {build.get('precision')})")
    return m, files


# ------------------------------------------------------------------------------------- the repository
def model_name(out: str | Path, name: str | None) -> str:
    """The model's name in the repository: ``name``, else the ``--out`` folder's name (its parent's for
    an ``--out`` named ``build``, as a recipe's ``runs/<recipe>/build``)."""
    out = Path(out)
    name = name or (out.parent.name if out.name == "build" and out.parent.name else out.name)
    if not NAME.fullmatch(name):
        raise BertoptError(f"--triton-name '{name}': not a usable Triton model name",
                           hint="letters, digits, '_', '.' and '-', not starting with '.' or '-' (it names a folder in the repository)")
    return name


def check_repository(repo: str | Path, name: str | None, out: str | Path, force: bool) -> Path:
    """Checks before any build work: ``repo`` is (or can be) a folder, and ``repo/<name>`` is not a file
    nor a model folder that was not written from ``out`` (one that was follows ``out``'s rebuilds).
    Returns ``repo/<name>``."""
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise BertoptError(f"{repo}: --triton is a file, not a model repository folder", hint="pass a folder (created if missing)")
    parent = next((p for p in repo.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise BertoptError(f"{repo}: --triton cannot be created: {parent} is a file, not a folder",
                           hint="pass a repository folder whose parents are folders")
    target = repo / model_name(out, name)
    if target.exists() and not target.is_dir():
        raise BertoptError(f"{target}: is a file, not a Triton model folder; refusing to replace it",
                           hint="remove that file, or pick another name with --triton-name")
    if target.is_dir() and not force and written_from(target) != Path(out).resolve():
        raise _exists_error(target, repo)
    return target


def written_from(target: Path) -> Path | None:
    """The build folder a model in a repository was written from (its config's first line), if bertopt wrote it."""
    try:
        first = (target / CONFIG).read_text().split("\n", 1)[0]
    except OSError:
        return None
    m = SOURCE.fullmatch(first)
    return Path(m.group(1)) if m else None


def write_repository(art: Artifact, target: Path, force: bool = False) -> Path:
    """Write ``target`` = ``REPO/<name>`` (atomically: a temporary sibling renamed into place). A folder
    already there with the same config and model file is left as it is; another one is an error
    unless ``force``."""
    from bertopt.ui import note

    m, files = model_for(art)
    text = config_pbtxt(target.name, m)
    if target.is_dir():
        if _same(target, text, files):
            note(f"triton: {target} is up to date")
            return target
        if not force and written_from(target) != art.path.resolve():  # one written from this build folder follows it
            raise _exists_error(target, target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / VERSION).mkdir(parents=True)
        (tmp / CONFIG).write_text(text)
        for f in files:
            link_or_copy(f, tmp / VERSION / f.name)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    batch = f"max_batch_size {m.max_batch_size}, dynamic batching" if m.max_batch_size else "no batching (fixed batch axis)"
    note(f"triton: {target / CONFIG} + {VERSION}/{m.model_file}  backend={m.backend} {batch}, {m.instances} instance(s)"
         + (f" x {m.threads} threads" if m.threads else ""))
    return target


def _same(target: Path, text: str, files: list[Path]) -> bool:
    cfg = target / CONFIG
    if not cfg.is_file() or cfg.read_text() != text:
        return False
    return all((target / VERSION / f.name).is_file() and sha256_file(target / VERSION / f.name) == sha256_file(f) for f in files)


def _exists_error(target: Path, repo: Path) -> BertoptError:
    return BertoptError(f"{target}: a model of that name is already in the Triton repository {repo} (from another artifact, or "
                        "written by hand); refusing to replace it",
                        hint="pick another name with --triton-name, remove that folder, or pass --force to replace it")

