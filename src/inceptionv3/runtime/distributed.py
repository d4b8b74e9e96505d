"""torchrun's environment and the few collectives training and sharded inference need.

`torchrun --nproc_per_node=N -m inceptionv3 train ...` starts N processes and tells each its place through
environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). `setup` reads them and
joins the process group (NCCL on GPUs, gloo on CPUs); without them everything here is a cheap no-op, so
the training loop has one code path for one process and for many machines.

`start` is the set-up of every inference command (features, evaluate); `shard_range` and
`gather_to_main` split its inputs into per-rank blocks and merge the outputs back in input order on rank 0.

`ShardedSampler` gives every rank its slice of each global batch in a seeded per-epoch order (the job
torch's DistributedSampler does), and can start mid-epoch: a resumed run skips the batches already
trained without decoding them, and N ranks together see exactly the batches one process would.
"""
from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job; world_size 1 is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and logs progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE_PROCESS = DistEnv()


def env_from_environ(environ: dict[str, str] | None = None) -> DistEnv:
    """The torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK); absent means one process."""
    environ = os.environ if environ is None else environ
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ValueError(f"bad torchrun environment (RANK / WORLD_SIZE / LOCAL_RANK): {e}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return DistEnv(rank=rank, world_size=world, local_rank=local)


def setup(device: torch.device, timeout_minutes: float = 30.0) -> DistEnv:
    """Join the process group torchrun describes (if any); returns this process's DistEnv.

    On CUDA each process takes GPU LOCAL_RANK and NCCL; on CPU, gloo. A rank that dies makes the others'
    next collective fail after `timeout_minutes` at the latest (torchrun usually stops them sooner).
    """
    env = env_from_environ()
    if not env.distributed or (dist.is_available() and dist.is_initialized()):
        return env
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    logger.debug("rank %d of %d joined (%s)", env.rank, env.world_size, backend)
    return env


def start(device: torch.device, distributed: bool | None = None) -> tuple[DistEnv, torch.device]:
    """(this process's DistEnv, its device) for a sharded inference job.

    `distributed` None means: when torchrun started this process. Joins the process group when
    distributed; under torchrun on GPUs each process then takes the GPU of its LOCAL_RANK.
    """
    if distributed is None:
        distributed = env_from_environ().distributed
    env = setup(device) if distributed else SINGLE_PROCESS
    return env, local_device(device, env)


def current_env() -> DistEnv:
    """The DistEnv of a process group someone already joined (`torch.distributed`), else one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE_PROCESS
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=env_from_environ().local_rank)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device, env: DistEnv) -> torch.device:
    """Under torchrun on GPUs, each process uses the GPU of its LOCAL_RANK."""
    if env.distributed and device.type == "cuda" and device.index is None:
        return torch.device("cuda", env.local_rank)
    return device


class TrainForward(nn.Module):
    """`forward(x) -> (logits, aux)`: the network's `forward_train` as a module's forward, the call DDP
    wraps (DDP syncs gradients of what runs through its own forward)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        return self.net.forward_train(x)


def wrap(model: nn.Module, env: DistEnv, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """DistributedDataParallel over `model.forward_train` (SyncBatchNorm first if asked); calling the
    result returns (logits, aux). For one process `model` comes back unchanged."""
    if not env.distributed:
        return model
    if sync_bn:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs GPUs (torch's SyncBatchNorm runs only on CUDA); on CPUs "
                             "leave it off: each process then normalizes over its own share of the batch")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(TrainForward(model), device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (what checkpoints and weight files hold)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return model.net if isinstance(model, TrainForward) else model


def all_reduce(values: list[float], env: DistEnv, device: torch.device, op: str = "sum") -> list[float]:
    """Sum (or max) a few numbers over all ranks; identity for one process."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's `obj`, in rank order (used for the per-rank RNG states in checkpoints)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: Any, env: DistEnv) -> list[Any] | None:
    """Every rank's `obj` in rank order on rank 0 (None elsewhere): merging sharded outputs there."""
    if not env.distributed:
        return [obj]
    out: list[Any] | None = [None] * env.world_size if env.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def shard_range(n: int, env: DistEnv) -> range:
    """This rank's contiguous block of [0, n): the blocks in rank order are 0 .. n-1, sizes within one.

    For inference (evaluate, features): each rank computes its block, and the outputs gathered in rank
    order are in input order, as one process would give them.
    """
    per, extra = divmod(n, env.world_size)
    start = env.rank * per + min(env.rank, extra)
    return range(start, start + per + (env.rank < extra))


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


class ShardedSampler(Sampler):
    """Each rank's share of each global batch, in a seeded order per epoch, startable at any step.

    Epoch e's order is `randperm(n)` from a generator seeded with (seed, e); step s takes positions
    [s * G, (s + 1) * G) of it (G = the global batch) and rank r the r-th of its `world_size` equal
    slices, so the union over ranks is the single-process batch. Incomplete global batches are dropped
    (a tiny last batch is noisy and can break BN), except that fewer than G images make one batch in a
    single-process run. Items are `(epoch, index)`: a `SeededSamples` dataset turns them into a per-sample
    augmentation seed, so augmentation does not depend on workers, ranks or resuming.
    """

    def __init__(self, n: int, global_batch: int, env: DistEnv = SINGLE_PROCESS, seed: int = 0,
                 shuffle: bool = True, weights: Sequence[float] | None = None) -> None:
        if global_batch % env.world_size:
            raise ValueError(
                f"--batch-size {global_batch} (the global batch) must be divisible by the {env.world_size} "
                "processes; each takes an equal share")
        self.n, self.global_batch, self.env, self.seed, self.shuffle = n, global_batch, env, seed, shuffle
        # Per-item sampling weights: each epoch then draws n items with replacement (class balancing).
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if self.weights is not None and len(self.weights) != n:
            raise ValueError(f"{len(self.weights)} sampling weights for {n} items")
        self.local_batch = global_batch // env.world_size
        if n >= global_batch:
            self.steps_per_epoch = n // global_batch
        elif env.world_size == 1 and n > 0:
            self.steps_per_epoch, self.local_batch = 1, n
        else:
            raise ValueError(f"{n} training images are fewer than the global batch {global_batch}; "
                             "lower --batch-size")
        self.epoch, self.start_step = 1, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Order of `epoch`, beginning at batch `start_step` (> 0 when resuming mid-epoch)."""
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.local_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        G, L, r = self.local_batch * self.env.world_size, self.local_batch, self.env.rank
        for step in range(self.start_step, self.steps_per_epoch):
            for i in order[step * G + r * L: step * G + (r + 1) * L]:
                yield self.epoch, i
