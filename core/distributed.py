"""One run over several processes: PyTorch's DistributedDataParallel, the processes started on
this machine by torch's elastic launcher (what `torchrun` runs), NCCL between GPUs and gloo on
the CPU.

The training loop (`core.train.train`) takes a `Ranks` and does the rest: it shards the task's
batches with `shard`, wraps the model, agrees on stopping with `any_rank`, and gathers the
validation outputs with `gather`. A task never writes distributed code.

Sharding keeps a run's global batches: the sampler's order is the one a single process would
draw (the same seed on every rank), each batch of `batch_size` is cut into one part per rank,
and DDP averages the parts' gradients. Validation is cut the same way and gathered whole, so
its metrics are those of one process.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from core.tasks import DeviceLoader, TensorBatches


@dataclass(frozen=True)
class Ranks:
    """This process's place in a run's process group."""

    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        """The process that writes metrics, progress, checkpoints and the export."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Ranks:
        """As the elastic launcher sets them (RANK, WORLD_SIZE, LOCAL_RANK)."""
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def backend(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def rank_device(requested: str, ranks: Ranks) -> str:
    """One GPU per process (by local rank), or the CPU."""
    if requested.startswith("cuda"):
        return f"cuda:{ranks.local_rank}"
    return "cpu"


def part(items: list[int], ranks: Ranks) -> list[int]:
    """This rank's contiguous share of one global batch (sizes differ by one at most)."""
    n = len(items)
    return items[ranks.rank * n // ranks.world : (ranks.rank + 1) * n // ranks.world]


class ShardedBatches(Sampler[list[int]]):
    """A batch sampler that draws a sampler's order in global batches of `batch_size` and yields
    this rank's part of each: DistributedSampler's job, keeping one process's batches. Training
    drops a last batch too small to give every rank a sample (so all ranks step together);
    validation keeps everything and skips empty parts."""

    def __init__(
        self, sampler: Iterable[int], batch_size: int, ranks: Ranks, *, train: bool, drop_last: bool
    ):
        self.sampler, self.batch_size, self.ranks = sampler, batch_size, ranks
        self.train, self.drop_last = train, drop_last

    def _keep_last(self, size: int) -> bool:
        if self.train:
            return not self.drop_last and size >= self.ranks.world
        return True

    def __iter__(self) -> Iterator[list[int]]:
        batch: list[int] = []
        for i in self.sampler:
            batch.append(int(i))
            if len(batch) == self.batch_size:
                mine = part(batch, self.ranks)
                if mine:
                    yield mine
                batch = []
        if batch and self._keep_last(len(batch)):
            mine = part(batch, self.ranks)
            if mine:
                yield mine

    def __len__(self) -> int:
        assert isinstance(self.sampler, Sized)
        n = len(self.sampler)
        full, rest = divmod(n, self.batch_size)
        if self.train:
            return full + (1 if rest and self._keep_last(rest) else 0)
        # Validation: the global batches whose part for this rank is not empty.
        sizes = [self.batch_size] * full + ([rest] if rest else [])
        return sum(
            1
            for size in sizes
            if (self.ranks.rank + 1) * size // self.ranks.world > self.ranks.rank * size // self.ranks.world
        )


def shard(
    batches: TensorBatches | DeviceLoader, ranks: Ranks, *, train: bool
) -> TensorBatches | DeviceLoader:
    """The same batches cut into this rank's parts (see `ShardedBatches`)."""
    if isinstance(batches, TensorBatches):
        return dataclasses.replace(batches, ranks=(ranks.rank, ranks.world, train))
    loader = batches.loader
    assert loader.batch_size is not None, "a task's DataLoader sets its batch size"
    sharded = DataLoader(
        loader.dataset,
        batch_sampler=ShardedBatches(
            loader.sampler, loader.batch_size, ranks, train=train, drop_last=loader.drop_last
        ),
        # The machine's loader processes shared out between the training processes.
        num_workers=max(1, loader.num_workers // ranks.world) if loader.num_workers else 0,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.persistent_workers,
    )
    return DeviceLoader(sharded, batches.device, batches.generator, batches.seed)


def any_rank(flags: list[bool], ranks: Ranks | None, device: str) -> list[bool]:
    """Each flag true on any rank (one all-reduce): how every rank agrees to stop at one step."""
    if ranks is None:
        return flags
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def total(values: list[float], ranks: Ranks | None, device: str) -> list[float]:
    """Sums over all ranks."""
    if ranks is None:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def from_main(values: list[float], ranks: Ranks | None, device: str) -> list[float]:
    """The main rank's values, on every rank (a plan made from its timings)."""
    if ranks is None:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return [float(v) for v in t.tolist()]


def gather(t: torch.Tensor, ranks: Ranks | None) -> torch.Tensor:
    """Every rank's rows of `t`, concatenated in rank order, on every rank."""
    if ranks is None:
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(ranks.world)]
    dist.all_gather(sizes, n)
    most = int(max(int(s) for s in sizes))
    padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(ranks.world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes, strict=True)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(run_id: int, processes: int, entry: Callable[[int], Any]) -> None:
    """Run `entry(run_id)` in `processes` processes on this machine, as `torchrun --standalone`
    does; raises torch's ChildFailedError when one fails (the others are stopped)."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=f"ascent-run-{run_id}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        local_addr="127.0.0.1",
        max_restarts=0,  # a failed rank fails the run; `runs resume` continues it
        monitor_interval=0.5,
    )
    elastic_launch(config, entry)(run_id)


def failure_message(exc: BaseException, processes: int) -> str:
    """One line for a run whose process failed, from torch's ChildFailedError."""
    first = getattr(exc, "get_first_failure", None)
    if first is None:
        return f"{type(exc).__name__}: {exc}"
    rank, failure = first()
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    said = str(message).strip().splitlines()[-1] if message else f"exit code {failure.exitcode}"
    return f"process {rank} of {processes} failed: {said}"
