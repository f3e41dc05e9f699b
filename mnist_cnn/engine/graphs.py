"""The training step on CUDA as one captured CUDA graph (`trainer.cuda_graph`).

A step of these small nets is about a hundred short kernels, and launched one by one from Python
the GPU waits on the host between them. Recorded once into a `torch.cuda.CUDAGraph`, each step is
a copy of its batch into the graph's static input buffers and one `replay()`: the same kernels on
the same memory, launched at once.

Inside the graph: the forward pass under the run's precision, the loss, the gradients zeroed in
place (`set_to_none=False`: the graph writes the same gradient tensors every replay), backward, the
optimizer step and the epoch's sums on the device (loss, correct). Outside it: making the batch
(permutation, indexing, augmentation warps), the scheduler step, the stop vote, and a batch of
another shape (the last partial one), which runs the same step eagerly.

The optimizer step is captured when its hyperparameters can change without a new capture:

- Adam and AdamW with `capturable=True` (step counts and bias corrections on the device) and the
  learning rate a CUDA tensor;
- SGD with `fused=True` and a CUDA lr tensor: the fused kernel reads the lr from device memory,
  while SGD's foreach and for-loop paths read a tensor lr with `.item()` (a sync, not capturable).

The schedulers (step, cosine) write a tensor lr in place (`fill_`), so every replay reads that
step's lr. OneCycleLR also cycles momentum: every step it sets Adam's beta1 (or SGD's momentum) to
a new Python float, which a graph would keep at its value when captured, and torch's Adam reads
tensor betas with `.item()`, which cannot be captured either. With a scheduler that cycles
momentum the optimizer therefore steps eagerly after each replay (forward, backward and the sums
stay in the graph), as it would without graphs. Each process sets the optimizer for the step it
will take when it makes its step, so a checkpoint continues on either device: a run captured on a
GPU and resumed on a CPU gets build_optimizer's settings back.

A run captures its step once and replays it every epoch, on one side stream: its first WARMUP
full batches run eagerly on that stream, as PyTorch's whole-network example does, so that lazy
set-up (cuDNN and cuBLAS handles, cuDNN's autotuning, gradients, optimizer state) happens before the
capture. cuBLAS keeps a workspace per (handle, stream), so a new stream every epoch would grow the
memory epoch by epoch; the graph reads and writes the same parameter, gradient, optimizer-state and
batchnorm tensors throughout (evaluation, checkpoints and early stopping's restore copy into them in
place), and the epoch's sums are zeroed in place when an epoch starts. A resumed run is a new
process and captures anew. Dropout works inside the graph: the capture registers the default CUDA
generator, and each replay advances its Philox offset as the eager step would.

A capture that fails (an operation that cannot be captured, out of memory while capturing) does not
end the run: a capture records kernels without running them, so nothing was computed, and the run
trains that batch and the rest eagerly, as with trainer.cuda_graph=false. The failure is warned once
with its own cause (torch.cuda.graph's exit would report "capture invalidated" instead, leave the
side stream current and the caching allocator routing to the graph's pool) and kept in
`CapturedStep.failure`, which the runner tags as `cuda_graph: failed: <cause>`.
"""

import contextlib
import logging
from typing import Callable, Optional, Tuple

import torch
from omegaconf import DictConfig

from mnist_cnn.errors import ConfigError

log = logging.getLogger(__name__)

WARMUP = 3  # eager steps before the capture, as in PyTorch's whole-network capture example

# (images, labels) -> (logits, loss)
Forward = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


def captures(trainer: DictConfig, device: torch.device) -> bool:
    """Whether the epoch's full batches replay a captured step. `trainer.cuda_graph=null` means on
    for a CUDA device, except under DDP (its gradient all-reduce runs in backward hooks, not
    verified inside a graph) and with torch.compile (which has CUDA graphs of its own); config.checks
    refuses `true` with either, and `true` on a device that resolved to the CPU is refused here."""
    if trainer.cuda_graph is None:
        return device.type == "cuda" and trainer.strategy != "ddp" and not trainer.compile
    if trainer.cuda_graph and device.type != "cuda":
        raise ConfigError(
            f"trainer.cuda_graph=true needs a CUDA GPU but the run is on {device.type}; set it to null or false."
        )
    return bool(trainer.cuda_graph)


def optimizer_in_graph(optimizer: torch.optim.Optimizer, scheduler) -> bool:
    """Whether `optimizer.step()` can be captured along with the gradients (see the module's notes)."""
    return _capture_flag(optimizer) is not None and not getattr(scheduler, "cycle_momentum", False)


def training_step(
    forward: Forward, optimizer: torch.optim.Optimizer, scheduler, captured: bool, device: torch.device
) -> "EagerStep":
    """The step train_epoch runs on each batch of the run: `captured` (what `captures` decided for
    the run), else eager; the optimizer set for the step it will take."""
    in_graph = captured and optimizer_in_graph(optimizer, scheduler)
    if in_graph:
        _graph_settings(optimizer, device)
    else:
        _eager_settings(optimizer)
    return CapturedStep(forward, optimizer, device, in_graph) if captured else EagerStep(forward, optimizer, device)


class EagerStep:
    """A training step run op by op: forward, loss, gradients, the optimizer step, and the batch
    added to the epoch's sums on the device (read once, when the epoch ends). One step serves a
    whole run (TrainingState.step)."""

    set_to_none = True  # eager PyTorch's default: backward makes each gradient anew
    failure: Optional[str] = None  # why a capture failed (CapturedStep); an eager step never tried one

    def __init__(self, forward: Forward, optimizer: torch.optim.Optimizer, device: torch.device):
        self.forward, self.optimizer = forward, optimizer
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)

    def new_epoch(self) -> None:
        """Zero the epoch's sums in place (a captured graph adds to these very tensors)."""
        self.loss_sum.zero_()
        self.correct.zero_()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.backward(images, labels)
        self.optimizer.step()

    def backward(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        logits, loss = self.forward(images, labels)
        self.optimizer.zero_grad(set_to_none=self.set_to_none)
        loss.backward()
        self.loss_sum += loss.detach().float() * len(labels)
        self.correct += (logits.argmax(1) == labels).sum()


class CapturedStep(EagerStep):
    """The step captured once a run and replayed for every batch of the first batch's shape; the
    optimizer steps inside the graph when `in_graph`, else eagerly after each replay. A failed
    capture leaves it eager for the rest of the run (`failure` says why)."""

    set_to_none = False  # the graph reads and writes the gradient tensors that exist when it is captured

    def __init__(self, forward: Forward, optimizer: torch.optim.Optimizer, device: torch.device, in_graph: bool):
        super().__init__(forward, optimizer, device)
        self.in_graph, self.stream = in_graph, torch.cuda.Stream(device)
        self.static, self.graph, self.warmed = None, None, 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if self.static is None:  # the graph's inputs, at addresses it will read on every replay
            self.static = (torch.empty_like(images), torch.empty_like(labels))
        if images.shape != self.static[0].shape or self.failure is not None:  # a partial batch, or no graph
            super().__call__(images, labels)
            return
        self.static[0].copy_(images)
        self.static[1].copy_(labels)
        if self.warmed < WARMUP:
            self._warm_up()
            return
        if self.graph is None:
            self.graph = self._capture()
            if self.graph is None:  # nothing ran: this batch too trains eagerly
                super().__call__(images, labels)
                return
        self.graph.replay()
        if not self.in_graph:
            self.optimizer.step()

    def _warm_up(self) -> None:
        """One eager step on the static inputs, on the side stream the capture will use."""
        main = torch.cuda.current_stream(self.stream.device)
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            super().__call__(*self.static)
        main.wait_stream(self.stream)
        self.warmed += 1

    def _capture(self) -> Optional["torch.cuda.CUDAGraph"]:
        """The step recorded as a graph, or None (warned once, `failure` set) when the capture failed.
        What torch.cuda.graph does, with the failure handled: the device synchronised (the static
        inputs copied, nothing in flight), the capture on the side stream in a pool of its own, the
        main stream current again whatever happens."""
        graph, pool = torch.cuda.CUDAGraph(), torch.cuda.graph_pool_handle()
        torch.cuda.synchronize(self.stream.device)
        with torch.cuda.stream(self.stream):
            graph.capture_begin(pool=pool)
            try:
                self.backward(*self.static)
                if self.in_graph:
                    self.optimizer.step()
                graph.capture_end()  # also instantiates the graph, which can fail too (out of memory)
            except Exception as e:  # noqa: BLE001 - any failure: the capture must end before the GPU is used again
                _abandon(graph, pool, self.stream.device)
                self._failed(e)
                return None
        return graph

    def _failed(self, error: Exception) -> None:
        """Warn once with the capture's own error and go on as trainer.cuda_graph=false would: the
        optimizer back to build_optimizer's settings."""
        text = str(error).strip()
        self.failure = text.splitlines()[0] if text else type(error).__name__
        log.warning(
            "capturing the training step as a CUDA graph failed (%s); the run trains on without one, step by "
            "step (trainer.cuda_graph=false does so from the start).",
            self.failure,
        )
        _eager_settings(self.optimizer)


def _abandon(graph: "torch.cuda.CUDAGraph", pool, device: torch.device) -> None:
    """End a capture that raised, so that the process goes on as before it: the stream leaves capture
    mode (capture_end's own error, "capture invalidated", is ignored: the cause is known); where
    capture_end failed before telling the caching allocator, the allocator stops routing allocations
    to the graph's pool (while it does, every free waits for the capture to end) and the pool is
    released; reset drops the generator's capture state."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    with contextlib.suppress(RuntimeError):
        graph.capture_end()
    try:
        torch._C._cuda_endAllocateToPool(index, pool)
    except RuntimeError:  # capture_end told the allocator already: reset releases the pool
        pass
    else:  # the pool is this function's to release
        torch._C._cuda_releasePool(index, pool)
    graph.reset()


def _capture_flag(optimizer: torch.optim.Optimizer):
    """The param-group setting under which `optimizer.step()` reads a tensor lr on the device without
    a host sync, or None for an optimizer that has none."""
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return "capturable"
    if isinstance(optimizer, torch.optim.SGD):
        return "fused"
    return None


def _graph_settings(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Ready `optimizer` for capture: its capture flag on, each lr a float32 CUDA tensor (which the
    schedulers fill in place) and Adam's step counts on the device. Applied to the optimizer
    build_optimizer made, or to one restored from any checkpoint (an eager or CPU run's included)."""
    flag = _capture_flag(optimizer)
    for group in optimizer.param_groups:
        group[flag] = True
        if not (
            torch.is_tensor(group["lr"]) and group["lr"].device == device
        ):  # a checkpoint's tensors load on the CPU
            group["lr"] = torch.full((), float(group["lr"]), dtype=torch.float32, device=device)
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")) and state["step"].device != device:
            state["step"] = torch.full((), float(state["step"]), dtype=torch.float32, device=device)


def _eager_settings(optimizer: torch.optim.Optimizer) -> None:
    """The optimizer as build_optimizer made it: undoes `_graph_settings` for a run captured on a GPU
    and continued where it is not (resumed on a CPU). Changes nothing on an optimizer never captured."""
    flag = _capture_flag(optimizer)
    for group in optimizer.param_groups:
        if flag is not None:
            group[flag] = optimizer.defaults[flag]
        if torch.is_tensor(group["lr"]):
            group["lr"] = group["lr"].item()
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")) and not state["step"].is_cpu:  # where Adam keeps uncaptured step counts
            state["step"] = state["step"].cpu()
