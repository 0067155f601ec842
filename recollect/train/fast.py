"""One training step of a grouped model: eager, or captured whole in a CUDA graph, optionally in bf16.

The online protocols (one example, a few recollections, one update) are launch-bound on a GPU: a
step of GEM's reduced ResNet-18 on 11 images is hundreds of tiny kernels. Two levers, combined:
fusing G models into one network (``recollect.grouped``) makes each kernel G times larger, and
capturing forward + backward + optimizer step in a CUDA graph replays all kernels with one launch.
``TrainStep`` wraps both behind one call; on the CPU (or with ``cuda_graph=False``) it is the plain
eager step, so the same code path serves the smoke profile and the GPU.

Reduced precision (``amp_dtype=torch.bfloat16``) runs the forward pass under autocast; parameters and
optimizer state stay in float32. The benchmark (``bench/speed.py``) checks on the GPU that graphs and
bf16 change losses only within a stated tolerance.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["TrainStep"]


class TrainStep:
    """``step(*inputs) -> per-group losses (G,)``: zero grads, forward, ``loss.sum().backward()``,
    optimizer step. ``loss_fn(model, *inputs) -> (G,)``. Inputs must keep fixed shapes when
    ``cuda_graph`` is on (they are copied into static buffers before each replay)."""

    def __init__(self, model, optimizer, loss_fn, cuda_graph: bool = False, amp_dtype=None, warmup: int = 3):
        self.model, self.opt, self.loss_fn = model, optimizer, loss_fn
        dev = next(model.parameters()).device
        self.cuda_graph = bool(cuda_graph) and dev.type == "cuda"
        self.amp_dtype = amp_dtype
        self.device_type = dev.type
        self.warmup = warmup
        self._calls = 0
        self._graph = None

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def _eager(self, *inputs):
        with self._autocast():
            loss = self.loss_fn(self.model, *inputs).float()
        self.opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        self.opt.step()
        return loss.detach()

    def __call__(self, *inputs):
        self._calls += 1
        if not self.cuda_graph:
            return self._eager(*inputs)
        if self._graph is None:
            if self._calls <= self.warmup:  # real training steps on a side stream, as CUDA graphs require
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    loss = self._eager(*inputs)
                torch.cuda.current_stream().wait_stream(s)
                return loss
            self._static = [t.clone() for t in inputs]
            self.opt.zero_grad(set_to_none=True)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                with self._autocast():
                    loss = self.loss_fn(self.model, *self._static).float()
                loss.sum().backward()
                self.opt.step()
            self._loss = loss.detach()
            # capture records the step without running it: replay now for this call's update
        for dst, src in zip(self._static, inputs):
            dst.copy_(src, non_blocking=True)
        self._graph.replay()
        return self._loss.clone()
