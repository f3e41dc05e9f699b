"""torch.cuda's streams and graphs stood in for on the CPU, so that the CPU can run the code that
captures a training step (engine.graphs) and tests can count its streams, captures and replays and
inject its failures."""

import contextlib
import dataclasses
from typing import Optional

import torch

from tests.helpers.state import fresh_state


class CudaOnTheCpu:
    """torch.cuda's streams and graphs as the CPU can stand in for them: the current stream is a
    stack the `torch.cuda.stream` context pushes and pops, a stream or graph made is counted, a
    capture runs its step on the CPU (a real one records it without running it, so a capture that
    fails here must fail before anything changed) and the caching allocator's routing to a graph's
    pool is kept as torch keeps it, each call that ends or releases it recorded.

    `fails` picks the failure: `IN_STEP` makes the model's forward raise while capturing, as an
    operation that cannot be captured does (capture_end then raises without telling the allocator);
    `AT_INSTANTIATE` makes capture_end raise after it ended the capture and told the allocator, as
    instantiating a graph out of memory does."""

    CAUSE = "CUDA error: operation not permitted when stream is capturing"
    OUT_OF_MEMORY = "CUDA error: out of memory"
    IN_STEP, AT_INSTANTIATE = "in the step", "at instantiation"

    def __init__(self, monkeypatch, fails: Optional[str] = None):
        self.streams, self.graphs, self.allocator, self.routing = [], [], [], set()
        self.capturing, self.fails = False, fails
        cuda = self

        class Stream:
            def __init__(self, device=None):
                self.device = device
                cuda.streams.append(self)

            def wait_stream(self, other):
                pass

        class Graph:
            def __init__(self):
                self.replays, self.was_reset = 0, False
                cuda.graphs.append(self)

            def capture_begin(self, pool=None, **options):
                cuda.capturing, self.pool = True, pool
                cuda.routing.add(pool)

            def capture_end(self):
                if not cuda.capturing:  # cudaStreamEndCapture on a stream that is not capturing
                    raise RuntimeError("CUDA error: operation not permitted when stream is not capturing")
                cuda.capturing = False
                if cuda.fails == cuda.IN_STEP:  # what cudaStreamEndCapture says about an invalidated capture
                    raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
                end_allocate_to_pool(0, self.pool)
                if cuda.fails == cuda.AT_INSTANTIATE:  # cudaGraphInstantiate, after the allocator was told
                    raise RuntimeError(cuda.OUT_OF_MEMORY)

            def replay(self):
                self.replays += 1

            def reset(self):
                self.was_reset = True

        self.main = Stream()
        self.streams.clear()  # the device's own stream is no stream a run made
        self.current = [self.main]

        @contextlib.contextmanager
        def stream(s):
            self.current.append(s)
            try:
                yield
            finally:
                self.current.pop()

        for name, value in {
            "Stream": Stream,
            "CUDAGraph": Graph,
            "stream": stream,
            "current_stream": lambda device=None: self.current[-1],
            "synchronize": lambda device=None: None,
            "graph_pool_handle": lambda: (0, 7),
            "current_device": lambda: 0,
        }.items():
            monkeypatch.setattr(torch.cuda, name, value)

        def end_allocate_to_pool(index, pool):
            if pool not in self.routing:  # the caching allocator's own check
                raise RuntimeError("endAllocatePool: not currently recording to mempool_id")
            self.routing.remove(pool)
            self.allocator.append(("_cuda_endAllocateToPool", pool))

        monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", end_allocate_to_pool)
        monkeypatch.setattr(
            torch._C, "_cuda_releasePool", lambda index, pool: self.allocator.append(("_cuda_releasePool", pool))
        )

    def check_forward(self, module, inputs):
        """A forward pre-hook: what a step that cannot be captured does when it is."""
        if self.capturing and self.fails == self.IN_STEP:
            raise RuntimeError(self.CAUSE)


def captured_on_the_cpu(cfg, cuda: CudaOnTheCpu):
    """fresh_state for `cfg`, its step loop set to capture (engine.graphs.captures said yes)."""
    state, settings = fresh_state(cfg)
    state.model.register_forward_pre_hook(cuda.check_forward)
    return state, dataclasses.replace(settings, cuda_graph=True)


# onecycle keeps Adam's step out of the graph: capturable Adam runs on CUDA only
GRAPHED = ("trainer.device=cpu", "trainer.precision=fp32", "data.batch_size=48", "optimizer=adam", "scheduler=onecycle")
