"""torch.distributed for the offline tools: one process per rank, started by torchrun.

`torchrun --nproc-per-node N -m step_ros extract|train ...` (or `srun torchrun ...`, see
docs/DISTRIBUTED.md) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in every
worker; `session()` turns them into an initialised process group (NCCL for CUDA devices, gloo
otherwise) and a `Dist` handle. Without those variables it yields None and the tools run as one
plain process: nothing here is needed for single-process use.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

LAUNCH_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    backend: str  # 'gloo' or 'nccl'
    device: str  # this rank's device: 'cpu' or 'cuda:<local rank>'

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.backend == 'nccl':
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of `values` over all ranks (float64, so counts stay exact)."""
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()


def launched() -> bool:
    """True inside a torchrun (or srun + torchrun) worker: the launcher's variables are set."""
    return all(name in os.environ for name in LAUNCH_VARS)


def rank_device(requested: str, *, local_rank: int) -> str:
    """The device of one rank: CUDA ranks take GPU `local_rank`, everything else the CPU."""
    wants_cuda = requested.startswith('cuda') or (requested == 'auto'
                                                 and torch.cuda.is_available())
    if not wants_cuda:
        return 'cpu'
    if not torch.cuda.is_available():
        raise RuntimeError(f'device {requested!r}: CUDA is not available on this machine')
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(f'LOCAL_RANK {local_rank}: this machine has only '
                           f'{torch.cuda.device_count()} GPU(s); start at most that many '
                           'processes per node (--nproc-per-node)')
    return f'cuda:{local_rank}'


@contextlib.contextmanager
def session(*, device: str = 'cpu') -> Iterator[Dist | None]:
    """An initialised process group for the life of the block when launched by torchrun.

    Yields None outside torchrun (plain single-process use). `device` is the tool's --device;
    CUDA ranks use NCCL on GPU LOCAL_RANK, CPU ranks gloo.
    """
    if not launched():
        yield None
        return
    local_rank = int(os.environ['LOCAL_RANK'])
    device = rank_device(device, local_rank=local_rank)
    backend = 'nccl' if device.startswith('cuda') else 'gloo'
    if backend == 'nccl':
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    try:
        yield Dist(rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=local_rank, backend=backend, device=device)
    finally:
        dist.destroy_process_group()


def rank_batches(order: torch.Tensor, *, batch_size: int, dist_: Dist
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """This rank's part of every global batch of `order`, as (indices, weights, global size).

    A single process takes order[i:i + B] for B = batch_size * world_size. DistributedSampler
    (no shuffle: `order` is already the epoch's permutation) hands rank r the positions
    r, r + W, r + 2W, ...; batching those by `batch_size` makes global batch j exactly positions
    [j*B, (j+1)*B) of `order`, the same samples as the single process. When W does not divide
    the clip count, the sampler pads with repeats of the first positions: those get weight 0.
    """
    n = len(order)
    sampler = DistributedSampler(range(n), num_replicas=dist_.world_size, rank=dist_.rank,
                                 shuffle=False, drop_last=False)
    positions = list(sampler)  # position m of this rank is padded position rank + W*m
    global_batch = batch_size * dist_.world_size
    for j, start in enumerate(range(0, len(positions), batch_size)):
        part = positions[start:start + batch_size]
        padded = [dist_.rank + dist_.world_size * (start + m) for m in range(len(part))]
        weights = torch.tensor([1.0 if p < n else 0.0 for p in padded])
        size = min(global_batch, n - j * global_batch)  # real samples in the global batch
        yield order[part], weights, size
