"""The QAT loop: distillation steps, held-out evaluation, early stopping, resumable checkpoints.

Determinism: batch order is a function of (seed, epoch, step) (``batches.Schedule``) and the dropout
RNG is re-seeded from (seed, rank, step) at the start and after every evaluation, which is also where
checkpoints are taken. A run killed at any point and started again resumes from its last checkpoint
and ends with the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bertopt.errors import BertoptError
from bertopt.distill.batches import Encoded, Schedule, collate, eval_batches
from bertopt.distill.checkpoint import Checkpointer
from bertopt.distill.dist import DistEnv
from bertopt.distill.losses import LossWeights, distill_loss, pool
from bertopt.params import MAX_STEPS


@dataclass
class TrainConfig:
    epochs: float = 1.0
    steps: int | None = None
    batch_size: int = 32
    lr: float = 2e-5
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    eval_every: int | None = None
    patience: int = 3
    min_delta: float = 0.01
    seed: int = 0
    select_on: str = "loss"  # encoders: "neighbours" keeps the state with the best held-out neighbour agreement@neighbours_k
    neighbours_k: int = 10


@dataclass
class Distillation:
    """One training run's fixed parts, read by the loop, its steps and the held-out evaluation."""

    student: Any  # trained in place
    teacher: Any  # frozen
    task: str
    pooling: str
    weights: LossWeights
    cfg: TrainConfig
    env: DistEnv
    layer_map: list[int] | None = None  # compress: the teacher layer each student layer distils from (losses.distill_loss)
    name: str = "qat"  # labels the progress bar and messages


# --------------------------------------------------------------------------------------- teacher cache
def teacher_reference(teacher, held: Encoded, task: str, pooling: str, batch_size: int, env: DistEnv) -> list:
    """The teacher's outputs on this rank's held-out batches, computed once (the teacher never changes)."""
    import torch

    refs = []
    with torch.inference_mode():
        for rows in eval_batches(held, batch_size, env.world, env.rank):
            b = collate(held, rows, env.device)
            out = teacher(**_model_inputs(b))
            if task == "sequence-classification":
                refs.append(out.logits.float())
            else:
                refs.append(pool(out.last_hidden_state, b["attention_mask"], pooling).float())
    return refs


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def evaluate(run: Distillation, held: Encoded, refs: list) -> dict:
    """The student's held-out metrics over all ranks: ``loss`` (output distillation + task), teacher agreement /
    cosine, accuracy when labels are known, and for encoders with ``cfg.select_on == "neighbours"`` the
    neighbour agreement@k with the teacher (see ``_score`` for what early stopping keeps)."""
    import torch
    import torch.nn.functional as F

    model, task, pooling, w, cfg, env = run.student, run.task, run.pooling, run.weights, run.cfg, run.env
    was_training = model.training
    model.eval()
    sums = [0.0, 0.0, 0.0, 0.0]  # loss*n, agreement-or-cosine*n, correct, n
    pooled = []
    with torch.inference_mode():
        for rows, ref in zip(eval_batches(held, cfg.batch_size * 2, env.world, env.rank), refs):
            b = collate(held, rows, env.device)
            out = model(**_model_inputs(b))
            n = len(rows)
            if task == "sequence-classification":
                T = w.temperature
                kd = F.kl_div(F.log_softmax(out.logits / T, -1), F.softmax(ref / T, -1), reduction="batchmean") * T * T
                loss = w.output * kd
                if "labels" in b:
                    if w.task > 0:
                        loss = loss + w.task * F.cross_entropy(out.logits, b["labels"])
                    sums[2] += float((out.logits.argmax(-1) == b["labels"]).sum())
                sums[1] += float((out.logits.argmax(-1) == ref.argmax(-1)).sum())
            else:
                cos = F.cosine_similarity(pool(out.last_hidden_state, b["attention_mask"], pooling), ref, dim=-1)
                if pooling == "none":  # per token: the loss over real tokens, the metric per text
                    m = b["attention_mask"].to(cos.dtype)
                    loss = w.output * (1 - cos[m.bool()]).mean()
                    sums[1] += float(((cos * m).sum(1) / m.sum(1).clamp(min=1)).sum())
                else:
                    loss = w.output * (1 - cos).mean()
                    sums[1] += float(cos.sum())
                    pooled.append(pool(out.last_hidden_state, b["attention_mask"], pooling).float())
            sums[0] += float(loss) * n
            sums[3] += n
    model.train(was_training)
    tot = env.all_sum(sums)
    n = max(tot[3], 1.0)
    res = {"loss": tot[0] / n, "n": int(tot[3])}
    if task == "sequence-classification":
        res["teacher_agreement"] = tot[1] / n
        if held.labels is not None:
            res["accuracy"] = tot[2] / n
    else:
        res["cosine"] = tot[1] / n
        if cfg.select_on == "neighbours" and pooling != "none":  # every rank takes part in the sum, an empty share too
            res["neighbours"] = _neighbours(torch.cat(pooled) if pooled else None, torch.cat(refs) if refs else None, cfg.neighbours_k, env)
    return res


def _neighbours(got, ref, k: int, env: DistEnv) -> float:
    """Neighbour agreement@k of the held-out embeddings with the teacher's (under torchrun: within each
    rank's share of the held-out texts, averaged)."""
    from bertopt.bench.quality import neighbour_agreement

    n = 0 if got is None else len(got)
    local = neighbour_agreement(ref.cpu().numpy(), got.cpu().numpy(), min(k, n - 1)) if n > 1 else 0.0
    tot = env.all_sum([local * n, float(n)])
    return tot[0] / max(tot[1], 1.0)


# --------------------------------------------------------------------------------------- training
def _seed(cfg: TrainConfig, env: DistEnv, step: int) -> None:
    import torch

    torch.manual_seed((cfg.seed * 1_000_003 + env.rank * 7919 + step) % (2**63))


def train(run: Distillation, train_data: Encoded, held: Encoded, ckpt: Checkpointer | None, show_progress: bool = True) -> dict:
    """Train ``run.student`` in place (it ends holding the best held-out weights); returns the history."""
    from bertopt.ui import progress

    student, cfg, env = run.student, run.cfg, run.env
    sched, total, eval_every = _plan(train_data, cfg, env)
    opt, lr_sched = _optimizer(student, cfg, total)
    model = student
    if env.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(student, device_ids=[env.local_rank] if env.device.startswith("cuda") else None)

    refs = teacher_reference(run.teacher, held, run.task, run.pooling, cfg.batch_size * 2, env)
    state, start, rec = _resume(run, ckpt, opt, lr_sched, total, lambda: evaluate(run, held, refs))
    stopped_early = start < total and rec.bad >= cfg.patience
    t0 = time.perf_counter()
    _seed(cfg, env, start)
    model.train()
    run.teacher.eval()
    with progress() if (show_progress and env.main) else _NoProgress() as p:
        bar = p.add_task(f"{run.name} ({env.world} proc)" if env.enabled else run.name, total=total, completed=start, status=rec.status())
        step = start
        while step < total and not stopped_early:
            loss, parts = _step(run, model, collate(train_data, sched.rows(step), env.device), opt, lr_sched, step)
            step += 1
            rec.add(loss, parts)
            p.update(bar, advance=1, status=f"loss {rec.loss_sum / rec.n:.4f} " + rec.status())
            if step % eval_every == 0 or step == total:
                rec.evaluated(step, evaluate(run, held, refs), run)
                stopped_early = rec.bad >= cfg.patience and step < total
                if ckpt is not None and env.main and step < total and not stopped_early:
                    ckpt.save({"step": step, "model": student.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": lr_sched.state_dict(), "history": rec.history, "best": rec.best, "bad_evals": rec.bad})
                env.barrier()
                _seed(cfg, env, step)
                p.update(bar, status=rec.status())
    student.load_state_dict(rec.best["state"])
    student.eval()
    history = rec.history
    return {
        "total_steps": total,
        "steps_run": step,
        "resumed_from": start if state is not None else None,
        "steps_per_epoch": sched.steps_per_epoch,
        "eval_every": eval_every,
        "stopped_early": stopped_early,
        "best_step": rec.best["step"],
        "best": {k: v for k, v in next(h for h in history if h["step"] == rec.best["step"]).items() if k != "train_parts"},
        "initial": {k: v for k, v in history[0].items() if k not in ("train_loss", "train_parts")},
        "history": history,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "config": asdict(cfg) | {"world_size": env.world, "global_batch": cfg.batch_size * env.world},
    }


@dataclass
class _Record:
    """The run between steps: the held-out history, the best state so far, evaluations without
    improvement, and the training loss (and its parts) summed since the last evaluation."""

    history: list
    best: dict
    bad: int = 0
    loss_sum: float = 0.0
    n: int = 0
    parts: dict = field(default_factory=dict)

    def add(self, loss: float, parts: dict) -> None:
        self.loss_sum += loss
        self.n += 1
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v

    def evaluated(self, step: int, ev: dict, run: Distillation) -> None:
        """Record a held-out evaluation at ``step``; keep the student's state when it improves."""
        train_loss = run.env.all_sum([self.loss_sum, self.n])
        self.history.append({"step": step, **ev, "train_loss": train_loss[0] / max(train_loss[1], 1),
                             "train_parts": {k: v / max(self.n, 1) for k, v in self.parts.items()}})
        self.loss_sum, self.n, self.parts = 0.0, 0, {}
        if _improves(_score(ev), self.best["score"], run.cfg.min_delta):
            self.best, self.bad = {"step": step, "score": _score(ev), "state": _snapshot(run.student)}, 0
        else:
            self.bad += 1

    def status(self) -> str:
        return _status(self.history, self.best)


def _plan(train_data: Encoded, cfg: TrainConfig, env: DistEnv) -> tuple[Schedule, int, int]:
    """(this rank's batch schedule, total steps, steps between held-out evaluations)."""
    lengths = [len(x) for x in train_data.ids]
    sched = Schedule(lengths, cfg.batch_size, cfg.seed, env.world, env.rank)
    if sched.steps_per_epoch < 1:
        raise BertoptError(
            f"{len(train_data)} training texts make fewer than {env.world} batch(es) of {cfg.batch_size}",
            hint="use more data or a smaller --batch-size",
        )
    total = cfg.steps if cfg.steps else max(1, math.ceil(cfg.epochs * sched.steps_per_epoch))
    if total > MAX_STEPS:  # --epochs within its range, but times a large --data
        raise BertoptError(f"--epochs {cfg.epochs:g} of {len(train_data)} texts in batches of {cfg.batch_size} is {total:,} steps "
                           f"(at most {MAX_STEPS:,})", hint="fewer --epochs, a larger --batch-size, or --steps N")
    return sched, total, cfg.eval_every or max(1, round(total / 10))


def _optimizer(student, cfg: TrainConfig, total: int):
    """AdamW (no decay on biases and LayerNorm) and a linear warmup/decay schedule.

    Not ``transformers.get_linear_schedule_with_warmup``: that one starts at lr 0 (step s of the warmup
    gets s/warm of the lr, this one (s+1)/warm), so every warmup step would train differently."""
    import torch

    warm = int(cfg.warmup * total)
    params = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    groups = [
        {"params": [p for n, p in params if not n.endswith(no_decay)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in params if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm))
    )
    return opt, lr_sched


def _snapshot(student) -> dict:
    return {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}


def _resume(run: Distillation, ckpt: Checkpointer | None, opt, lr_sched, total: int, held_out) -> tuple[dict | None, int, _Record]:
    """(checkpoint state or None, start step, the record): from the checkpoint when there is one, else
    from a held-out evaluation of the untrained student (step 0)."""
    from bertopt.ui import note

    state = ckpt.load() if ckpt is not None else None
    if state is not None:
        run.student.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["scheduler"])
        if run.env.main:
            note(f"{run.name}: resuming from the checkpoint at step {state['step']}/{total} ({ckpt.path})")
        return state, state["step"], _Record(state["history"], state["best"], state["bad_evals"])
    ev = held_out()
    return None, 0, _Record([{"step": 0, **ev, "train_loss": None}], {"step": 0, "score": _score(ev), "state": _snapshot(run.student)})


def _step(run: Distillation, model, b: dict, opt, lr_sched, step: int) -> tuple[float, dict]:
    """One optimizer step on batch ``b`` (``model``: the student, or its DDP wrapper): (the loss, its parts)."""
    import torch

    w = run.weights
    inputs = _model_inputs(b)
    with torch.no_grad():
        t_out = run.teacher(**inputs, output_hidden_states=w.needs_hidden, output_attentions=w.needs_attention)
    s_out = model(**inputs, output_hidden_states=w.needs_hidden, output_attentions=w.needs_attention)
    loss, parts = distill_loss(s_out, t_out, b, run.task, run.pooling, w, run.layer_map)
    if not torch.isfinite(loss.detach()):
        raise BertoptError(f"{run.name}: the loss became {float(loss.detach())} at step {step}", hint="lower --lr, or check the data")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if run.cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(run.student.parameters(), run.cfg.max_grad_norm)
    opt.step()
    lr_sched.step()
    return float(loss.detach()), parts


def _score(ev: dict) -> tuple:
    """What early stopping maximises: held-out accuracy when labels are known, else neighbour agreement
    with the teacher when measured (the held-out loss breaks ties), else the held-out distillation loss
    (lower is better)."""
    for key in ("accuracy", "neighbours"):
        if key in ev:
            return ev[key], -ev["loss"]
    return (-ev["loss"],)


def _improves(score: tuple, best: tuple, min_delta: float) -> bool:
    """Does a held-out ``score`` (see ``_score``) beat ``best``? More correct held-out texts always do;
    at equal accuracy (or without labels) the loss must fall by more than ``min_delta`` of its best
    value: a held-out loss a fraction of a percent lower is noise, and keeping the earlier state (with
    --init-from: the calibrated model itself) is the safer pick."""
    if len(score) == 2 and score[0] != best[0]:
        return score[0] > best[0]
    return -score[-1] < -best[-1] * (1.0 - min_delta)


def _status(history: list, best: dict | None) -> str:
    if not history:
        return ""
    h = history[-1]
    bits = [f"val {h['loss']:.4f}"]
    if "accuracy" in h:
        bits.append(f"acc {h['accuracy']:.4f}")
    if "neighbours" in h:
        bits.append(f"nb@10 {h['neighbours']:.3f}")
    if best is not None:
        bits.append(f"best@{best['step']}")
    return " ".join(bits)


class _NoProgress:
    """Stand-in for the progress bar on ranks other than 0."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass


def distil(student, teacher, data, o, job, env: DistEnv, *, stage: str, layer_map: list[int] | None = None) -> tuple[dict, Checkpointer]:
    """The training run of qat and compress: the loss weights and schedule from ``o`` (TrainingOptions),
    the task, head and checkpoint key from ``job`` (the stage's plan: ``out``, ``inputs``, ``params``,
    ``task``, ``pooling``), checkpoints in ``o.checkpoint_dir`` (default ``.<out>.<stage>-checkpoint``
    beside ``out``); returns the history and the checkpointer (removed once written)."""
    from bertopt.artifacts import fingerprint
    from bertopt.paths import resolve_path

    # qat's options add the attention weight; compress's the embedding options (qat keeps their defaults)
    weights = LossWeights(output=o.output_weight, hidden=o.hidden_weight, attention=o.distillation_weights().get("attention_weight", 0.0),
                          task=o.task_weight if o.label_column else 0.0, temperature=o.temperature,
                          embedding=getattr(o, "embedding_loss", "cosine"), similarity=getattr(o, "similarity_weight", 0.0))
    cfg = TrainConfig(epochs=o.epochs if not o.steps else 1.0, steps=o.steps, batch_size=o.batch_size, lr=o.lr, warmup=o.warmup_ratio,
                      eval_every=o.eval_every, patience=o.patience, min_delta=o.min_delta, seed=o.seed,
                      select_on=getattr(o, "select_on", "loss"))
    out = job.out
    ckpt_dir = resolve_path(o.checkpoint_dir) if o.checkpoint_dir else out.parent / f".{out.name}.{stage}-checkpoint"
    ckpt = Checkpointer(ckpt_dir, fingerprint(f"{stage}-checkpoint", job.inputs, job.params | {"world_size": env.world}), owned=not o.checkpoint_dir)
    if not o.resume and env.main:
        ckpt.remove()
    env.barrier()
    run = Distillation(student, teacher, job.task, job.pooling, weights, cfg, env, layer_map=layer_map, name=stage)
    return train(run, data.train, data.held, ckpt), ckpt


def fmt_eval(e: dict) -> str:
    """A held-out evaluation in one line: loss, accuracy, teacher agreement, cosine."""
    bits = [f"loss {e['loss']:.4f}"]
    for k in ("accuracy", "teacher_agreement", "cosine", "neighbours"):
        if k in e:
            bits.append(f"{k} {e[k]:.4f}")
    return ", ".join(bits)
