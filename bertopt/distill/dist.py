"""torch.distributed under torchrun, detected from the environment (no code change for the user).

``torchrun --nproc_per_node N -m bertopt qat ...`` sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/PORT;
``run_qat`` then joins the process group (gloo on the CPU, nccl on GPUs), wraps the student in
DistributedDataParallel and lets only rank 0 print, checkpoint and write the artifact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class DistEnv:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world: int = 1
    backend: str | None = None
    owns_group: bool = False  # we initialised the process group (so we tear it down)
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of a list of floats over all ranks."""
        if not self.enabled:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def any_failed(self, failed: bool) -> bool:
        """True on every rank when any rank failed (so no rank waits forever for a dead peer)."""
        return self.all_sum([1.0 if failed else 0.0])[0] > 0

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def setup(device: str | None = None) -> DistEnv:
    """Join the torchrun process group when WORLD_SIZE > 1; pick the device and the thread count."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    env = DistEnv(world=world, rank=rank, local_rank=local_rank, local_world=local_world, device=device)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    elif world > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world > 1:
        import torch.distributed as dist

        env.backend = "nccl" if device.startswith("cuda") else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=env.backend)
            env.owns_group = True
    return env


def rank0_writes(env: DistEnv, write, stage: str) -> None:
    """Rank 0 runs ``write()`` (the artifact); the others wait. A failure on any rank fails them all,
    rank 0 with its own error."""
    from bertopt.errors import BertoptError

    error: BaseException | None = None
    if env.main:
        try:
            write()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = e
    if env.any_failed(error is not None):
        if error is not None:
            raise error
        raise BertoptError(f"{stage}: rank 0 failed to write the artifact", hint="see rank 0's error above")
