"""Static shape buckets for OpenVINO: ``--shapes dynamic`` (default), ``1x16,1x32,8x128`` (batch x sequence),
``auto`` / ``auto:N`` (sequence buckets at batch 1 planned from the token lengths of real texts, as the
TensorRT profiles are: :func:`bertopt.backends.profiles.plan_profiles`; ``auto:N`` also reaches N tokens),
or both (``auto,8x128``).

A call runs on the smallest bucket holding its (batch, sequence): inputs padded (pad id 0, mask 0),
outputs cut back. A shape no bucket holds, or one the bucket would pad by more than :func:`pads_too_much`
allows, runs on the dynamic model, which every artifact also compiles.
Pure Python: no OpenVINO needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from bertopt.errors import BertoptError

MAX_BUCKETS = 12
# planned buckets: a static bucket pads every call to its edge, so bands are narrower than TensorRT's
# profiles (which run any shape inside their range): at most 2x from a band's lower edge to its upper one
PLAN_SPREAD = 2.0
PLAN_MAX = 4
# Padding a call up to a bucket costs its extra tokens; the dynamic model costs a higher per-call overhead. Measured
# (MiniLM INT8, 2 threads): a few padded tokens per row win (1x10 in 1x16: 0.74x the dynamic time), 48+ at b1 or 28
# per row at b8 lose (1x64 in 1x112: 1.34x; 8x100 in 8x128: 1.08x; 8x16 in 8x128: 9.3x).
PAD_ROW_TOKENS = 16
PAD_SHARE = 0.25
PADDING_RULE = f"dynamic when a bucket pads a call by more than {PAD_ROW_TOKENS} tokens per row and {PAD_SHARE:.0%} of its tokens"


@dataclass(frozen=True, order=True)
class Bucket:
    batch: int
    seq: int

    def spec(self) -> str:
        return f"{self.batch}x{self.seq}"

    def holds(self, batch: int, seq: int) -> bool:
        return batch <= self.batch and seq <= self.seq


def parse_shapes(spec: str | None, max_length: int = 512) -> tuple[list[Bucket], int | None]:
    """``--shapes`` -> (explicit buckets, the ``auto`` cover: None when not asked, 0 for ``auto``, N for ``auto:N``)."""
    if spec is None or spec.strip().lower() == "dynamic":
        return [], None
    if not spec.strip():
        raise BertoptError("--shapes is empty", hint="dynamic, buckets like 1x16,1x32,8x128, or auto (with --data)")
    buckets, auto = [], None
    for item in (p.strip() for p in spec.split(",")):
        if item.lower().startswith("auto"):
            if auto is not None:
                raise BertoptError(f"--shapes '{spec}': auto is given twice", hint="one auto or auto:N, e.g. --shapes auto,8x128")
            auto = _auto_cover(item, max_length)
            continue
        buckets.append(_parse_bucket(item, spec, max_length))
    if len(set(buckets)) != len(buckets):
        raise BertoptError(f"--shapes '{spec}': a bucket is given twice", hint="give each BATCHxSEQ once")
    if len(buckets) > MAX_BUCKETS:
        raise BertoptError(f"--shapes: {len(buckets)} buckets", hint=f"each bucket is compiled and cached: use at most {MAX_BUCKETS}")
    return sorted(buckets, key=_cost), auto


def _parse_bucket(item: str, spec: str, max_length: int) -> Bucket:
    b, sep, s = item.lower().partition("x")
    try:
        batch, seq = int(b), int(s)
    except ValueError:
        batch = seq = -1
    if not sep or batch < 0:
        raise BertoptError(f"--shapes '{spec}': '{item}' is not BATCHxSEQ", hint="e.g. --shapes 1x16,1x32,8x128 (or dynamic, auto, auto:N)")
    if batch < 1 or seq < 1:
        raise BertoptError(f"--shapes '{spec}': '{item}' must have batch >= 1 and seq >= 1", hint="e.g. --shapes 1x16,8x128")
    if seq > max_length:
        raise BertoptError(f"--shapes '{spec}': '{item}' is longer than the model's {max_length} positions", hint=f"use a seq of at most {max_length}")
    return Bucket(batch, seq)


def _auto_cover(item: str, max_length: int) -> int:
    from bertopt.backends.profiles import parse_auto

    try:
        cover = parse_auto(item, max_length)
    except BertoptError as e:
        raise BertoptError(e.message.replace("--profile", "--shapes"), hint=(e.hint or "").replace("--profile", "--shapes")) from None
    if cover is None:
        raise BertoptError(f"--shapes: '{item}' is not auto or auto:N", hint="e.g. --shapes auto:128")
    return cover


def plan_buckets(lengths: Sequence[int], max_length: int, cover: int = 0) -> list[Bucket]:
    """Batch-1 buckets at the upper edges of the length bands the TensorRT profile planner finds
    (bands of at most :data:`PLAN_SPREAD` x, at most :data:`PLAN_MAX` of them, the last reaching ``cover``)."""
    from bertopt.backends.profiles import plan_profiles

    profs = plan_profiles(lengths, max_length=max_length, batch=(1, 1, 1), max_profiles=PLAN_MAX, spread=PLAN_SPREAD, cover=cover)
    return [Bucket(1, p.seq[2]) for p in profs]


def recorded_buckets(recorded, max_length: int, source: str) -> list[Bucket]:
    """The buckets a build's manifest lists, held to what ``--shapes`` accepts (sizes, the model's positions, at
    most the explicit plus the planned count): a forged manifest makes OpenVINO compile nothing else."""
    hint = "rebuild the artifact with `bertopt build --backend openvino`"
    if not isinstance(recorded, list) or not all(isinstance(b, str) for b in recorded):
        raise BertoptError(f"{source}: build.buckets must be a list of BATCHxSEQ strings", hint=hint)
    if len(recorded) > MAX_BUCKETS + PLAN_MAX:
        raise BertoptError(f"{source}: build.buckets lists {len(recorded)} buckets, more than a build writes", hint=hint)
    spec = ",".join(recorded)
    try:
        return sorted({_parse_bucket(item.strip(), spec, max_length) for item in recorded}, key=_cost)
    except BertoptError as e:
        raise BertoptError(f"{source}: build.buckets: {e.message}", hint=hint) from None


def merge(explicit: Sequence[Bucket], planned: Sequence[Bucket]) -> list[Bucket]:
    return sorted(set(explicit) | set(planned), key=_cost)


def select_bucket(buckets: Sequence[Bucket], batch: int, seq: int) -> Bucket | None:
    """The cheapest bucket (fewest padded tokens) holding (batch, seq); None when none does."""
    fits = [b for b in buckets if b.holds(batch, seq)]
    return min(fits, key=_cost) if fits else None


def pads_too_much(bucket: Bucket, batch: int, seq: int) -> bool:
    """Whether padding a ``batch x seq`` call up to ``bucket`` adds more than :data:`PAD_ROW_TOKENS` tokens per row
    or :data:`PAD_SHARE` of the call's tokens, whichever is more: such a call runs faster on the dynamic model."""
    real = batch * seq
    return bucket.batch * bucket.seq - real > max(PAD_ROW_TOKENS * batch, PAD_SHARE * real)


def _cost(b: Bucket) -> tuple[int, int]:
    return b.batch * b.seq, b.seq
