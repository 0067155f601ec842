"""Training steps captured whole in a CUDA graph, and a counter that proves a step could be.

The paper's workloads are launch-bound on a GPU: the distillation students of section 5.1 learn one
example per update, the lifelong learners of section 5.2 one incoming example at a time, and even
the autoencoders of Figure 2 are small. Fusing G models into one network (``recollect.grouped``)
makes each kernel G times larger; capturing forward, backward and the optimizer step(s) in a CUDA
graph then replays all kernels of a step with one launch. Two pieces, shared by every trainer:

* :class:`SyncCounter` - a dispatch-level op counter (a ``TorchDispatchMode``) that records every
  operation that would block the host on a GPU or make a step uncapturable, plus the number of
  kernel launches. It runs on the CPU, so the tests prove on the CPU that a step is sync-free.
* :class:`CapturedStep` - wraps a step function ``fn(*inputs)`` (any number of models and
  optimizers): on CUDA it runs a few eager warm-up steps on a side stream, captures ``fn`` into a
  ``torch.cuda.CUDAGraph`` and replays it, the inputs copied into static buffers; on the CPU (or
  with ``cuda_graph=False``) it calls ``fn`` eagerly with the same inputs, so the CPU tests exercise
  the very function the GPU replays.

Rules for a capturable step (what the trainers here follow):

* fixed shapes: the inputs are index tensors of fixed shape (the last partial batch of an epoch
  runs through :meth:`CapturedStep.eager`);
* no host synchronisation and no Python state that changes per step (a Python int read inside the
  step is frozen into the graph); learning rates and step counts are device tensors
  (``recollect.grouped``'s optimizers);
* gradients: :func:`backward_step` sets them to None before ``backward()``, so during capture the
  backward pass allocates them in the graph's private memory pool and every replay overwrites
  them (PyTorch's whole-network capture pattern);
* randomness on the device: the default CUDA generator is handled by PyTorch; an explicit CUDA
  ``torch.Generator`` used inside the step must be registered
  (:meth:`CapturedStep.register_generator`, ``CUDAGraph.register_generator_state`` in torch >= 2.4,
  so its offset advances on every replay). CPU generators cannot drive a captured step: draw on
  the CPU outside the step and pass the result as an input (the trainers draw a chunk of indices
  at a time);
* after ``load_state_dict`` of anything whose tensors the graph reads: ``recollect.grouped``'s
  optimizers and ``nn.Module.load_state_dict`` copy in place, so a graph stays valid; anything
  else that replaces tensors needs :meth:`CapturedStep.reset` (capture again after the resume).

Reduced precision: ``amp_dtype=torch.bfloat16`` runs ``fn`` under autocast (without the cast
cache, which a graph must not keep); :func:`backward_step` leaves autocast for the backward pass
and the optimizer steps, as PyTorch recommends. Parameters and optimizer state stay float32.
"""
from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import probe

__all__ = ["SyncCounter", "CapturedStep", "eager_steps", "backward_step", "autocast", "TrainStep", "STRICT_SYNC"]

#: set by the GPU queue's preflight (``recollect.queue``): every step on CUDA runs under
#: ``torch.cuda.set_sync_debug_mode("error")``, so a step that would block the host fails there
#: instead of silently costing GPU time in the paper runs
STRICT_SYNC = False


@contextlib.contextmanager
def _strict_sync(device_type: str):
    if not (STRICT_SYNC and device_type == "cuda"):
        yield
        return
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)


_EAGER = [False]


@contextlib.contextmanager
def eager_steps():
    """Every :class:`CapturedStep` made or called inside runs eagerly, as with ``cuda_graph=False``:
    the GPU preflight times one item per chapter this way beside its captured run (the engine's
    graphs against the same fused step without them, ``recollect.queue.preflight``)."""
    old, _EAGER[0] = _EAGER[0], True
    try:
        yield
    finally:
        _EAGER[0] = old


# ------------------------------------------------------------------------------------------------
# counting host synchronisations and kernel launches
# ------------------------------------------------------------------------------------------------
#: operations that block the host on a GPU (or make a step uncapturable), whatever their inputs
_SYNC_OPS = {
    "aten::_local_scalar_dense",  # .item(), bool(t), int(t), float(t), `if t:`
    "aten::nonzero",  # also torch.where(cond), argwhere
    "aten::masked_select",
    "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
    "aten::unique_dim_consecutive",
    "aten::equal", "aten::allclose",  # return Python bools
    "aten::bincount",  # reads its maximum on the host
    "aten::_linalg_eigh", "aten::_linalg_check_errors",  # read LAPACK error codes on the host (CUDA)
}
#: no kernel behind these (allocation or metadata only)
_NO_KERNEL = {
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided",
    "aten::_unsafe_view", "aten::lift_fresh", "aten::detach", "aten::resize_", "aten::set_",
}


def _is_bool_index(indices) -> bool:
    return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in indices or ())


def _device_of(x) -> str | None:
    return x.device.type if isinstance(x, torch.Tensor) else None


class SyncCounter(TorchDispatchMode):
    """Counts, per operation, what would block the host on a GPU or keep a step from being captured,
    and the kernel launches (non-view ATen operations) of the code run inside it::

        with SyncCounter() as c:
            step()
        c.syncs      # {"aten::_local_scalar_dense": 1, ...}
        c.launches   # int: kernel launches, estimated as non-view ATen operations
        c.ops        # {"aten::mm": 4, ...}: the launches per operation
        c.assert_no_syncs()

    Recorded as syncs: ``_local_scalar_dense`` (``.item()``, ``bool()``/``int()``/``float()`` of a
    tensor, a tensor in an ``if``), ``nonzero`` (``torch.where(cond)``), ``masked_select``,
    ``unique*``, ``equal``/``allclose``, ``bincount``, ``repeat_interleave`` with a tensor of repeats
    and no ``output_size``, indexing or index assignment with a boolean mask (``x[mask]``,
    ``x[mask] = v``: a ``nonzero`` inside the kernel), the LAPACK error checks of ``eigh``/``eigvalsh``
    and ``cholesky``/``solve``/``inv`` (``_linalg_eigh``, ``_linalg_check_errors``), and
    device-to-host copies (``_to_copy`` / ``copy_`` into a CPU tensor from a non-CPU one).
    ``host_tensors`` counts tensors built from Python data inside the region (``torch.tensor(...)``:
    on CUDA a host-to-device copy, frozen into a graph); it is not a sync.

    What the counter can NOT see on a CPU-only run: device-to-host copies (every tensor is on the
    CPU, so ``.cpu()``, ``.tolist()`` and ``.numpy()`` dispatch nothing or a no-op), syncs that happen
    inside a kernel rather than as a dispatched operation (the boolean-mask and LAPACK cases above
    are caught by name; others are not), host-to-device copies from pageable memory, allocator
    retries, and anything outside PyTorch's dispatcher (Python state that changes per step). On a
    GPU, complement it with ``torch.cuda.set_sync_debug_mode("error")``, and capture itself fails on
    any sync. ``launches`` counts dispatched operations: a multi-tensor (``_foreach_*``, fused
    optimizer) operation counts once, although on CUDA it launches one kernel per ~30-110 tensors
    or ~20 M elements.
    """

    def __init__(self):
        super().__init__()
        self.syncs: dict[str, int] = {}
        self.ops: dict[str, int] = {}
        self.launches = 0
        self.host_tensors = 0

    def _sync(self, name: str) -> None:
        self.syncs[name] = self.syncs.get(name, 0) + 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        overload = func._overloadname
        if name in _SYNC_OPS:
            self._sync(name)
        elif name == "aten::repeat_interleave" and overload in ("Tensor", "self_Tensor") \
                and kwargs.get("output_size") is None:
            self._sync(name + " (no output_size)")
        elif name in ("aten::index", "aten::_unsafe_index") and _is_bool_index(args[1] if len(args) > 1 else None):
            self._sync("aten::index (boolean mask)")
        elif name in ("aten::index_put_", "aten::index_put", "aten::_index_put_impl_") \
                and _is_bool_index(args[1] if len(args) > 1 else None):
            self._sync(name + " (boolean mask)")
        elif name == "aten::_to_copy" and _device_of(args[0]) not in (None, "cpu") \
                and kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cpu":
            self._sync("aten::_to_copy (device to host)")
        elif name == "aten::copy_" and _device_of(args[0]) == "cpu" and _device_of(args[1]) not in (None, "cpu"):
            self._sync("aten::copy_ (device to host)")
        if name == "aten::lift_fresh":
            self.host_tensors += 1
        if func.namespace == "aten" and not func.is_view and name not in _NO_KERNEL:
            self.launches += 1
            self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **kwargs)

    @property
    def n_syncs(self) -> int:
        return sum(self.syncs.values())

    def assert_no_syncs(self, what: str = "the step") -> None:
        """``AssertionError`` listing the recorded syncs, if any."""
        if self.syncs:
            raise AssertionError(f"{what} synchronises with the host: {self.syncs}")


# ------------------------------------------------------------------------------------------------
# the step helpers
# ------------------------------------------------------------------------------------------------
def autocast(device_type: str, amp_dtype=None):
    """``torch.autocast(device_type, amp_dtype)`` without the cast cache, or a no-op for ``None``."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=amp_dtype, cache_enabled=False)


def backward_step(loss: torch.Tensor, *optimizers) -> None:
    """Set the gradients to None, ``loss.sum().backward()``, then every optimizer's ``step()``,
    outside autocast (PyTorch's recommendation for reduced precision). With the gradients None
    before ``backward()``, a captured step allocates them in the graph's pool and each replay
    overwrites them (nothing accumulates across replays)."""
    with torch.autocast(loss.device.type, enabled=False):
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        for opt in optimizers:
            opt.step()


def _clone(out):
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone(o) for o in out)
    return out


def _check_outputs(out, name):
    if out is None or isinstance(out, torch.Tensor):
        return
    if isinstance(out, (tuple, list)) and all(o is None or isinstance(o, torch.Tensor) for o in out):
        return
    raise ValueError(f"{name} must return a tensor, a tuple/list of tensors or None (a graph replays tensors "
                     f"only), got {type(out).__name__}")


class CapturedStep:
    """One training step ``fn(*inputs)``, replayed from a CUDA graph on CUDA.

    ``fn`` does the forward pass(es), ``backward()`` and the optimizer step(s) (any number of models
    and optimizers; :func:`backward_step` is the usual tail) and returns a tensor, a tuple of
    tensors or None. ``inputs`` are tensors (typically index tensors) of fixed shape, dtype and
    device: the first call fixes them and a later call with others is a ``ValueError`` (use
    :meth:`eager` for the odd one, e.g. an epoch's last partial batch).

    On CUDA with ``cuda_graph=True``: the first ``warmup`` calls run eagerly on a side stream (they
    create optimizer state, pick cuDNN algorithms), the next one captures ``fn`` on static copies of
    its inputs and replays it; every later call copies its inputs into the static buffers and
    replays. Outputs are returned as clones of the static outputs. Before every call the
    learning rates assigned to the ``optimizers``' param groups are copied in (``sync_lr``), so
    schedules reach the graph. Otherwise (the CPU, or ``cuda_graph=False``) every call is
    ``fn(*inputs)``, eagerly, under the same autocast: the same arithmetic, bit for bit, as a
    hand-written loop.

    ``amp_dtype`` (e.g. ``torch.bfloat16``) runs ``fn`` under autocast; ``generators`` /
    :meth:`register_generator` name explicit CUDA generators used inside ``fn``; :meth:`reset`
    drops the graph (capture again, e.g. after replacing tensors the graph reads).
    """

    def __init__(self, fn, *, cuda_graph: bool = True, warmup: int = 3, amp_dtype=None, optimizers=(),
                 generators=(), device=None, name: str | None = None):
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        self.fn = fn
        self.cuda_graph = bool(cuda_graph)
        self.warmup = int(warmup)
        self.amp_dtype = amp_dtype
        self.optimizers = list(optimizers)
        self.device = None if device is None else torch.device(device)
        self.name = name or getattr(fn, "__name__", "step")
        self._generators = []
        self.reset()
        for g in generators:
            self.register_generator(g)

    # ------------------------------------------------------------------ set-up
    def register_generator(self, generator: torch.Generator) -> None:
        """Declare an explicit ``torch.Generator`` used inside ``fn``. On CUDA it is registered with
        the graph (``CUDAGraph.register_generator_state``) so that every replay draws fresh numbers
        from it; a CPU generator cannot be used inside a captured CUDA step (``ValueError`` at
        capture). Register before the capture (or call :meth:`reset`)."""
        if self._graph is not None:
            raise ValueError("register generators before the step is captured (or call reset() first)")
        self._generators.append(generator)

    def reset(self) -> None:
        """Drop the graph, its static buffers and the input shapes: the next calls warm up and
        capture again."""
        self._graph = None
        self._static_in = None
        self._static_out = None
        self._spec = None
        self._calls = 0

    def warmup_calls(self) -> int:
        """Eager calls before the capture: ``warmup``, or at most ``probe.PROBE_WARMUP`` while a probe
        records (its loops are a few steps long and must reach a replay)."""
        return min(self.warmup, probe.PROBE_WARMUP) if probe.active() else self.warmup

    @property
    def captured(self) -> bool:
        """True once a CUDA graph has been captured (and is replayed)."""
        return self._graph is not None

    def graphed(self, device=None) -> bool:
        """Whether calls on ``device`` (default: the step's device) go through a CUDA graph (never
        inside :func:`eager_steps`)."""
        dev = torch.device(device) if device is not None else self.device
        return self.cuda_graph and not _EAGER[0] and dev is not None and dev.type == "cuda"

    # ------------------------------------------------------------------ calls
    def _check(self, inputs):
        for i, t in enumerate(inputs):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{self.name}: input {i} is a {type(t).__name__}; a captured step takes tensors "
                                 f"only (pass Python values as tensors, or close over constants)")
        spec = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        if self._spec is None:
            self._spec = spec
        elif spec != self._spec:
            raise ValueError(f"{self.name}: inputs (shape, dtype, device) {spec} differ from those the step was set "
                             f"up with {self._spec}; a captured step replays fixed shapes: run the odd call "
                             f"(e.g. the last partial batch) with .eager(...)")

    def _device_for(self, inputs) -> torch.device:
        if self.device is None:
            self.device = inputs[0].device if inputs else torch.device("cpu")
        return self.device

    def _sync_lr(self):
        for opt in self.optimizers:
            sync = getattr(opt, "sync_lr", None)
            if sync is not None:
                sync()

    def _run(self, inputs):
        dev = self._device_for(inputs).type
        with autocast(dev, self.amp_dtype), _strict_sync(dev):
            out = self.fn(*inputs)
        _check_outputs(out, self.name)
        return out

    def eager(self, *inputs):
        """``fn(*inputs)`` eagerly on the current stream (any shapes), e.g. an epoch's last partial
        batch; the graph, if any, is kept."""
        self._sync_lr()
        return self._run(inputs)

    def __call__(self, *inputs):
        if self.cuda_graph:
            self._check(inputs)
        self._sync_lr()
        if not self.graphed(self._device_for(inputs)):
            self._calls += 1
            return self._run(inputs)
        if self._graph is None:
            probe.unsteady()
            if self._calls < self.warmup_calls():
                self._calls += 1
                return self._side_stream(inputs)
            self._capture(inputs)
        for dst, src in zip(self._static_in, inputs):
            dst.copy_(src)
        self._graph.replay()
        return _clone(self._static_out)

    def _side_stream(self, inputs):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            out = self._run(inputs)
        torch.cuda.current_stream().wait_stream(s)
        return out

    def _capture(self, inputs):
        for g in self._generators:
            if g.device.type != "cuda":
                raise ValueError(f"{self.name}: generator on {g.device} registered, but a captured CUDA step can only "
                                 f"use CUDA generators; draw on the CPU outside the step and pass the result in")
        self._static_in = [t.clone() for t in inputs]
        for opt in self.optimizers:  # backward allocates the gradients in the graph's pool (module docstring)
            opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        if self._generators and not hasattr(graph, "register_generator_state"):
            raise ValueError(f"{self.name}: this torch ({torch.__version__}) cannot register explicit CUDA generators "
                             f"with a graph (torch >= 2.4 can); use the default CUDA generator inside the step")
        for g in self._generators:
            graph.register_generator_state(g)
        try:
            with torch.cuda.graph(graph):
                out = self._run(self._static_in)
        except Exception as e:
            self.reset()
            raise RuntimeError(f"capturing {self.name} in a CUDA graph failed: {e}. A host sync or a new "
                               f"allocation of Python-dependent size inside the step is the usual cause; run the "
                               f"step under SyncCounter on the CPU to find it, or pass cuda_graph=False") from e
        self._graph, self._static_out = graph, out


# ------------------------------------------------------------------------------------------------
# one model, one optimizer: the benchmark's step
# ------------------------------------------------------------------------------------------------
class TrainStep:
    """``step(*inputs) -> per-group losses (G,)``: forward ``loss_fn(model, *inputs) -> (G,)``, then
    :func:`backward_step` with ``optimizer``, as one :class:`CapturedStep` (a CUDA graph on CUDA with
    ``cuda_graph=True``, eager otherwise). Inputs keep fixed shapes when captured."""

    def __init__(self, model, optimizer, loss_fn, cuda_graph: bool = False, amp_dtype=None, warmup: int = 3):
        self.model, self.opt, self.loss_fn = model, optimizer, loss_fn
        dev = next(model.parameters()).device
        self.amp_dtype = amp_dtype

        def train_step(*inputs):
            loss = loss_fn(model, *inputs).float()
            backward_step(loss, optimizer)
            return loss.detach()

        self.step = CapturedStep(train_step, cuda_graph=cuda_graph, warmup=warmup, amp_dtype=amp_dtype,
                                 optimizers=[optimizer], device=dev)
        self.cuda_graph = self.step.graphed(dev)

    def __call__(self, *inputs):
        return self.step(*inputs)
