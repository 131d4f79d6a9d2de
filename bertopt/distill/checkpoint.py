"""The distillation run's resumable checkpoint (``Checkpointer``): atomic writes by rank 0, a fingerprint
read before any tensor, and clean-up that touches only bertopt's own files."""

from __future__ import annotations

import json
import os
from pathlib import Path

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_META = "checkpoint.json"  # the fingerprint, read before any tensor
CREATED_MARKER = ".created-by-bertopt"


class Checkpointer:
    """One resumable checkpoint, written atomically by rank 0 (by default a hidden sibling of the output folder).

    Safe to point at any folder (``--checkpoint-dir``): bertopt touches only its own files there
    (``checkpoint.pt``, ``checkpoint.json`` and their temporary files) and removes the folder itself
    only when bertopt created it and it is empty. Loading never runs code from the file: the
    fingerprint in ``checkpoint.json`` is checked first, then the tensors are read with
    ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
    """

    def __init__(self, folder: Path, fingerprint: str, owned: bool = False):
        self.folder = Path(folder)
        self.path = self.folder / CHECKPOINT_FILE
        self.meta = self.folder / CHECKPOINT_META
        self.marker = self.folder / CREATED_MARKER
        self.fingerprint = fingerprint
        self.owned = owned  # the folder is bertopt's (the default hidden one), marker or not

    def load(self) -> dict | None:
        import torch

        from bertopt.ui import note

        if not self.path.is_file():
            return None
        try:
            meta = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            meta = None
        if not isinstance(meta, dict) or meta.get("fingerprint") != self.fingerprint:
            why = "it has no checkpoint.json" if meta is None else "it was written for other inputs, options or code"
            note(f"not resuming from {self.path}: {why}; training starts over")
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a torn or foreign file is not resumable; start over
            note(f"not resuming from {self.path}: not a loadable checkpoint ({type(e).__name__}); training starts over")
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            note(f"not resuming from {self.path}: its contents do not match checkpoint.json; training starts over")
            return None
        return state

    def save(self, state: dict) -> None:
        import torch

        from bertopt.outdir import keep_note

        if not self.folder.is_dir():
            self.folder.mkdir(parents=True)
            self.marker.write_text("created by bertopt qat; removed with the folder after a successful run\n")
        # checkpoint.json first: once checkpoint.pt exists, so does the fingerprint that lets it be read
        # (a kill between the two replaces must not leave a checkpoint that cannot be resumed from).
        # Its step is informational; the tensors carry their own fingerprint and step.
        meta_tmp = self.meta.with_name(CHECKPOINT_META + f".tmp-{os.getpid()}")
        meta_tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "step": state.get("step")}) + "\n")
        os.replace(meta_tmp, self.meta)
        tmp = self.path.with_name(CHECKPOINT_FILE + f".tmp-{os.getpid()}")
        torch.save({**state, "fingerprint": self.fingerprint}, tmp)
        os.replace(tmp, self.path)
        keep_note(str(self.folder), f"QAT checkpoint kept in {self.folder}: run the same command again to resume")

    def remove(self) -> None:
        """Remove what bertopt wrote, never anything else; the folder only if bertopt made it and it is then empty."""
        import contextlib

        from bertopt.outdir import keep_note

        keep_note(str(self.folder), None)
        for p in (self.path, self.meta, *self.folder.glob(CHECKPOINT_FILE + ".tmp-*"), *self.folder.glob(CHECKPOINT_META + ".tmp-*")):
            with contextlib.suppress(OSError):
                p.unlink()
        if self.owned or self.marker.is_file():
            with contextlib.suppress(OSError):
                self.marker.unlink()
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only succeeds when empty
