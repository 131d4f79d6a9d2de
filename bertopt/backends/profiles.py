"""TensorRT optimization profiles for (batch, sequence) inputs: parsed from flags or planned from real text.

TensorRT tunes its kernels for each profile's *opt* shape; shapes far from it run on kernels chosen
for another size (the "engine runs at max-profile cost" complaint when opt == max). Planning from a
histogram of real token lengths puts opt where the traffic is and, when lengths spread widely, gives
short and long texts separate profiles. Pure Python: no TensorRT needed.

Flag syntax: ``batch=1:8:32,seq=1:128:256`` (min:opt:max per axis; one number fixes the axis), several
profiles separated by ``;``. ``auto`` plans from ``--data``; ``auto:N`` also makes the last profile
reach N tokens (e.g. the sequence length a benchmark runs).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from bertopt.errors import BertoptError

AXES = ("batch", "seq")
DEFAULT_BATCH = (1, 8, 32)
ALIGN = 8  # sequence bounds are rounded up to a multiple of 8 (tensor-core friendly GEMM shapes)
MAX_PROFILES = 3


@dataclass(frozen=True)
class Profile:
    batch: tuple[int, int, int]
    seq: tuple[int, int, int]
    share: float | None = None  # fraction of the planning texts this profile serves

    def shapes(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(min, opt, max) shapes of every (batch, sequence) input."""
        return tuple((self.batch[i], self.seq[i]) for i in range(3))  # type: ignore[return-value]

    def covers(self, batch: int, seq: int) -> bool:
        return self.batch[0] <= batch <= self.batch[2] and self.seq[0] <= seq <= self.seq[2]

    def spec(self) -> str:
        return f"batch={':'.join(map(str, self.batch))},seq={':'.join(map(str, self.seq))}"

    @classmethod
    def from_json(cls, d: dict) -> "Profile":
        """A profile as a build manifest records it (``to_json``): the batch/seq ranges; ``share`` is not needed to run."""
        return cls(batch=tuple(d["batch"]), seq=tuple(d["seq"]))

    def to_json(self) -> dict:
        d = asdict(self)
        d["batch"], d["seq"] = list(self.batch), list(self.seq)
        if d["share"] is None:
            d.pop("share")
        return d


# ------------------------------------------------------------------------------------- from flags
def parse_profiles(spec: str, max_length: int = 512) -> list[Profile]:
    """``"batch=1:8:32,seq=1:128:256;batch=1:1:4,seq=256:384:512"`` -> profiles, with errors naming the part."""
    if not spec or not spec.strip():
        raise BertoptError("--profile is empty", hint="e.g. --profile 'batch=1:8:32,seq=1:128:256', or --profile auto with --data")
    profiles = []
    for i, part in enumerate(p for p in spec.split(";") if p.strip()):
        axes: dict[str, tuple[int, int, int]] = {}
        for item in part.split(","):
            key, sep, value = item.partition("=")
            key = key.strip().lower()
            if not sep or key not in AXES:
                raise BertoptError(
                    f"--profile '{part.strip()}': '{item.strip()}' is not batch=MIN:OPT:MAX or seq=MIN:OPT:MAX",
                    hint="axes are batch and seq, e.g. 'batch=1:8:32,seq=1:128:256'",
                )
            if key in axes:
                raise BertoptError(f"--profile '{part.strip()}': {key} is given twice", hint="one batch= and one seq= per profile")
            axes[key] = _parse_range(value, key, part)
        if "seq" not in axes:
            raise BertoptError(f"--profile '{part.strip()}': no seq=MIN:OPT:MAX", hint="e.g. 'batch=1:8:32,seq=1:128:256'")
        prof = Profile(batch=axes.get("batch", DEFAULT_BATCH), seq=axes["seq"])
        if prof.seq[2] > max_length:
            raise BertoptError(
                f"--profile '{part.strip()}': seq max {prof.seq[2]} exceeds the model's {max_length} positions",
                hint=f"use a seq max of at most {max_length}",
            )
        profiles.append(prof)
    if len(profiles) > 8:
        raise BertoptError(f"--profile: {len(profiles)} profiles", hint="each profile lengthens the build and grows the engine; use at most 8")
    return profiles


def _parse_range(value: str, key: str, part: str) -> tuple[int, int, int]:
    try:
        nums = [int(v) for v in value.split(":")]
    except ValueError:
        raise BertoptError(f"--profile '{part.strip()}': {key}={value} is not integers", hint=f"{key}=MIN:OPT:MAX, e.g. {key}=1:8:32") from None
    if len(nums) == 1:
        nums = nums * 3
    if len(nums) != 3:
        raise BertoptError(f"--profile '{part.strip()}': {key}={value} needs MIN:OPT:MAX (or one number)", hint=f"e.g. {key}=1:8:32")
    lo, opt, hi = nums
    if lo < 1 or not lo <= opt <= hi:
        raise BertoptError(f"--profile '{part.strip()}': {key}={value} must satisfy 1 <= MIN <= OPT <= MAX", hint=f"e.g. {key}=1:8:32")
    return lo, opt, hi


def default_profiles(max_length: int = 512, batch: tuple[int, int, int] = DEFAULT_BATCH, seq_opt: int = 128) -> list[Profile]:
    """One profile for any batch up to 32 and any length up to the model's, tuned at batch 8 x 128."""
    hi = max(1, max_length)
    return [Profile(batch=batch, seq=(1, min(seq_opt, hi), hi))]


# ------------------------------------------------------------------------------------- from text
def round_up(n: int, k: int = ALIGN) -> int:
    return int(math.ceil(n / k) * k)


def plan_profiles(
    lengths: Sequence[int],
    max_length: int = 512,
    batch: tuple[int, int, int] = DEFAULT_BATCH,
    max_profiles: int = MAX_PROFILES,
    spread: float = 4.0,
    cover: int = 0,
) -> list[Profile]:
    """Profiles planned from the token lengths of real texts (special tokens included).

    - lengths are clipped to ``max_length`` (the tokenizer truncates there) and rounded up to a
      multiple of 8;
    - the number of profiles is the smallest k <= ``max_profiles`` for which every band spans at most
      ``spread`` x (max / lower edge), splitting the sorted lengths into k bands of equal text count;
    - each band's opt is its median length (rounded up to 8): the shape most of its traffic has;
    - the bands tile 1..(longest length seen) without gaps, so every planning text has a profile; the
      last band's max is the longest length seen (inputs longer than that must be truncated to it);
    - ``cover`` (e.g. the length a benchmark runs) extends the last band to it, or, when that would
      break the spread, adds a profile of its own tuned at ``cover``.
    """
    if not lengths:
        raise BertoptError("no texts to plan profiles from", hint="pass --data with real texts, or give --profile explicitly")
    if max_length < 1:
        raise BertoptError(f"max_length={max_length}", hint="the model's maximum sequence length must be positive")
    clipped = sorted(min(max(1, int(n)), max_length) for n in lengths)
    rounded = [min(round_up(n), max_length) for n in clipped]
    k = 1
    while k < max_profiles and not _bands_ok(rounded, k, spread):
        k += 1
    bands = _split(rounded, k)
    profiles = []
    lower = 1
    for i, band in enumerate(bands):
        hi = band[-1] if i < len(bands) - 1 else rounded[-1]
        opt = min(max(min(round_up(_median(band)), max_length), lower), hi)
        profiles.append(Profile(batch=batch, seq=(lower, opt, hi), share=round(len(band) / len(rounded), 4)))
        lower = hi + 1
    cover = min(cover, max_length)
    if cover > rounded[-1]:
        last = profiles[-1]
        if cover / max(last.seq[0], bands[-1][0], ALIGN) > spread:
            # lengths no text had: their own profile, tuned at the length asked for
            profiles.append(Profile(batch=batch, seq=(lower, cover, cover), share=0.0))
        else:
            profiles[-1] = Profile(batch=batch, seq=(last.seq[0], last.seq[1], cover), share=last.share)
    return profiles


def _split(sorted_lengths: list[int], k: int) -> list[list[int]]:
    """k bands of (about) equal count; bands end where the length changes, so no length is split."""
    n = len(sorted_lengths)
    bands: list[list[int]] = []
    start = 0
    for i in range(1, k + 1):
        end = round(i * n / k) if i < k else n
        end = max(end, start + 1)
        while end < n and sorted_lengths[end] == sorted_lengths[end - 1]:
            end += 1
        if start < n:
            bands.append(sorted_lengths[start:end])
        start = end
    return [b for b in bands if b]


def _bands_ok(sorted_lengths: list[int], k: int, spread: float) -> bool:
    lower = 1
    for band in _split(sorted_lengths, k):
        edge = max(lower, band[0], ALIGN)
        if band[-1] / edge > spread:
            return False
        lower = band[-1] + 1
    return True


def _median(xs: Sequence[int]) -> float:
    s = sorted(xs)
    m = len(s) // 2
    return float(s[m]) if len(s) % 2 else (s[m - 1] + s[m]) / 2


def length_histogram(lengths: Sequence[int], max_length: int = 512, bins: Sequence[int] = (16, 32, 64, 128, 256, 384, 512)) -> dict[str, int]:
    """Counts of lengths per bin, for the manifest (``"<=16": n, ...``)."""
    out: dict[str, int] = {}
    edges = [b for b in bins if b < max_length] + [max_length]
    lo = 0
    for e in edges:
        out[f"{lo + 1}-{e}"] = sum(1 for n in lengths if lo < min(n, max_length) <= e)
        lo = e
    return out


def token_lengths(tokenizer, texts: Sequence[str], max_length: int) -> list[int]:
    """Token counts (with special tokens) of each text, truncated at ``max_length``."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    return [len(ids) for ids in enc["input_ids"]]


def select_profile(profiles: Sequence[Profile], batch: int, seq: int) -> int:
    """Index of the profile to run (batch, seq) with: among those covering it, the one with the
    narrowest sequence range (its kernels were tuned closest to this shape); -1 when none does."""
    fits = [i for i, p in enumerate(profiles) if p.covers(batch, seq)]
    if not fits:
        return -1
    return min(fits, key=lambda i: (profiles[i].seq[2] - profiles[i].seq[0], abs(profiles[i].seq[1] - seq)))


def parse_auto(spec: str, max_length: int = 512) -> int | None:
    """``auto`` -> 0, ``auto:N`` -> N (the length the last planned profile must reach); None if not auto."""
    s = spec.strip().lower()
    if s == "auto":
        return 0
    if not s.startswith("auto:"):
        return None
    try:
        n = int(s[5:])
    except ValueError:
        raise BertoptError(f"--profile '{spec}': expected auto or auto:N (N tokens)", hint="e.g. --profile auto:128") from None
    if not 1 <= n <= max_length:
        raise BertoptError(f"--profile '{spec}': N must be from 1 to the model's {max_length} positions", hint="e.g. --profile auto:128")
    return n
