"""Data-parallel training over the processes torchrun starts (`trainer.strategy=ddp`).

`torchrun --nproc_per_node=N -m mnist_cnn trainer.strategy=ddp ...` runs the same command N times.
Each process (rank) joins one process group (gloo for CPU tensors, NCCL for CUDA ones, each GPU
being cuda:LOCAL_RANK) and trains the model wrapped in DistributedDataParallel. The design keeps a
DDP run the same experiment as a one-process run:

- `data.batch_size` is the global batch. Every rank draws the same epoch permutation from the same
  seeded generator and takes `index[rank::world]` of each global batch (`data.splits.batches`): the
  shards are disjoint, equal in size and together the batch, and DDP averages their gradients, so N
  processes take the optimizer steps one process takes, up to float reduction order. The batch size
  must divide by N; a last partial batch is cut to a multiple of N (left out if smaller than N), so
  no rank ever gets an empty batch. (batchnorm layers normalise over each rank's shard, DDP's
  default, and keep rank 0's running statistics.)
- Every rank holds identical state (weights, optimizer, scheduler, every RNG), so the checkpoint
  rank 0 writes resumes all of them exactly; dropout draws the same masks on every rank's shard.
  Each rank's dropout draws from the generator of its own GPU, so the checkpoint holds the state
  of rank 0's own GPU and each rank restores it on its own (engine.repro.rng_state).
- Train loss and accuracy are sums all-reduced once an epoch: every rank checks for divergence on
  the same whole-epoch numbers, which rank 0 logs.
- Rank 0 alone has side effects: it resolves where a run starts (MLflow, checkpoint files) and sends
  that to the others, scores the whole validation and test splits, writes checkpoints and talks to
  MLflow. The other ranks never open the store and log only warnings and errors.
- Whatever ends training early is decided together, so no rank waits in a collective for one that
  left: a failure while setting up (checks, data, opening the run) stops every rank before the
  first step; a stop (Ctrl-C, SIGTERM reach each rank at its own moment) is voted on at every step,
  a stop or rank 0's pruning decision at every epoch's end. Votes and broadcasts use a gloo group of
  their own (CPU tensors: a vote never waits for the GPU). A rank that crashes mid-epoch makes
  torchrun stop the others.

With `trainer.strategy=single` none of this runs: `SINGLE` makes every helper here a plain call.
"""

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from mnist_cnn.config.job import Torchrun
from mnist_cnn.errors import EXIT_CRASH, EXIT_INTERRUPTED, ConfigError
from mnist_cnn.interrupts import Stops


@dataclass(frozen=True)
class World:
    """This process's place among those that train one run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # which GPU on this machine
    control: Any = None  # the gloo group for votes and broadcasts; None: one process, no collectives

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.control is not None


SINGLE = World()


@contextmanager
def process_group(join: bool, torchrun: Optional[Torchrun]) -> Iterator[World]:
    """Under torchrun and with `join` (a DDP run, or a resume, whose strategy only rank 0 can read in
    the run's own config), join torchrun's process group, and always leave it (errors and signals
    too); else SINGLE."""
    if torchrun is None or not join:
        yield SINGLE
        return
    # The run's device is not known yet: gloo serves CPU tensors, NCCL (set up lazily) CUDA ones.
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    try:
        world = World(dist.get_rank(), dist.get_world_size(), torchrun.local_rank, dist.new_group(backend="gloo"))
        if not world.main:
            logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the story once
        yield world
    finally:
        dist.destroy_process_group()


def device_for(world: World, device: torch.device) -> torch.device:
    """cuda means cuda:LOCAL_RANK under torchrun: one GPU per process."""
    if not world.distributed or device.type != "cuda":
        return device
    visible = torch.cuda.device_count()
    if world.local_rank >= visible:
        raise ConfigError(
            f"torchrun started process {world.local_rank} on this machine but only {visible} GPUs are visible; "
            f"use --nproc_per_node={visible} (one process per GPU), or trainer.device=cpu."
        )
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The module that trains: under DDP, a wrapper that averages the gradients across ranks in backward."""
    if not world.distributed:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The module itself, for what rank 0 does alone (evaluation): DDP's forward may talk to the other ranks."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_sum(world: World, *values: Any) -> List[float]:
    """Each value (a device tensor or a number) summed over the ranks, in one all_reduce; float64
    keeps counts exact."""
    if not world.distributed:
        return [float(v) for v in values]
    device = next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))
    packed = torch.stack([torch.as_tensor(v, device=device).double() for v in values])
    dist.all_reduce(packed)
    return packed.tolist()


class StopVote:
    """The step loop's stop check. One process: `stops.check()`. Under DDP, each step's vote
    (has any rank been asked to stop?) is an all_reduce sent without waiting and read at the next
    step, so every rank stops before the same step and the vote costs no step any time."""

    def __init__(self, world: World, stops: Stops):
        self.world, self.stops, self.votes, self.pending = world, stops, torch.zeros(1, dtype=torch.int32), None

    def check(self) -> None:
        if not self.world.distributed:
            self.stops.check()
            return
        self.close()
        if self.votes.item():
            raise KeyboardInterrupt("stop requested")
        self.votes.fill_(int(self.stops.requested()))
        self.pending = dist.all_reduce(self.votes, dist.ReduceOp.MAX, group=self.world.control, async_op=True)

    def close(self) -> None:
        """Wait for the last vote (at the epoch's end: a stop it carries is seen by `agree`)."""
        if self.pending is not None:
            self.pending.wait()
            self.pending = None


def agree(world: World, *votes: bool) -> List[bool]:
    """At an epoch's end, each vote true if it is true on any rank (a stop asked for on one rank, a
    decision of rank 0, which alone reads MLflow and scores validation), in one all_reduce."""
    if not world.distributed or not votes:
        return list(votes)
    packed = torch.tensor([int(v) for v in votes])
    dist.all_reduce(packed, dist.ReduceOp.MAX, group=world.control)
    return [bool(v) for v in packed]


def from_main(world: World, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` computed by rank 0 alone (it may read MLflow or a checkpoint file) and sent to
    every rank. If it fails, rank 0 raises the error and the others exit quietly with its exit code."""
    if not world.distributed:
        return fn(*args)
    box: List[Any] = [None]
    if world.main:
        try:
            box = [(True, fn(*args))]
        except BaseException as e:
            dist.broadcast_object_list([(False, _exit_code(e))], src=0, group=world.control)
            raise
    dist.broadcast_object_list(box, src=0, group=world.control)
    ok, value = box[0]
    if not ok:
        raise SystemExit(value)
    return value


def on_every_rank(world: World, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` on every rank (checks, data, model), then a vote: if it failed anywhere, every
    rank stops here, before a run is opened or a collective could wait for the rank that failed. The
    ranks where it failed raise their error, the others exit quietly with its exit code."""
    if not world.distributed:
        return fn(*args)
    result, error = None, None
    try:
        result = fn(*args)
    except BaseException as e:  # noqa: BLE001 - re-raised below, once every rank knows
        error = e
    code = torch.tensor([_exit_code(error) if error is not None else 0])
    dist.all_reduce(code, dist.ReduceOp.MAX, group=world.control)
    if error is not None:
        raise error
    if code.item():
        raise SystemExit(int(code.item()))
    return result


def _exit_code(error: BaseException) -> int:
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else EXIT_CRASH
    return getattr(error, "exit_code", EXIT_CRASH)
