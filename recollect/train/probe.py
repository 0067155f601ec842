"""Per-step timing and counting of the training loops, for the plan, the dry run and the GPU preflight.

Every training loop calls :func:`tick` once per step with the loop's name (``"epochs"``,
``"students"``, ``"lifelong"``, ``"eval"``, ...). Outside a :class:`Recorder` this is one context
variable lookup and does nothing. Inside one, the time from a tick to the next tick (of any loop) is
attributed to the loop of the earlier tick, so the recorder knows, per loop, how many steps ran and
how long each took; with ``count=True`` it also counts, per loop, the floating-point operations
(``torch.utils.flop_counter``) and the kernel launches (non-view ATen operations) of the steps.

On a GPU, ``sync=True`` synchronises the device at every tick so that the times are the device's.

A captured step (``recollect.train.capture.CapturedStep``) runs a few eager warm-up calls and one
capture before it replays a CUDA graph; those calls call :func:`unsteady`, their step's time is kept
apart (``LoopStats.warm``) and a loop's per-step time is that of its steady steps (the replays) when
it has any. Under a recorder a captured step warms up once (:data:`PROBE_WARMUP`), so a probe's loop
of three steps reaches a replay: a probe's time is the real run's replayed step, not its eager one.
"""
from __future__ import annotations

import contextvars
import time
from collections import defaultdict

__all__ = ["tick", "unsteady", "active", "Recorder", "LoopStats", "PROBE_WARMUP"]

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("recollect_probe", default=None)

#: eager warm-up calls of a captured step while a recorder is active (the real runs use the step's own)
PROBE_WARMUP = 1


def tick(loop: str) -> None:
    """Mark the start of one step of ``loop`` (no-op unless a :class:`Recorder` is active)."""
    rec = _ACTIVE.get()
    if rec is not None:
        rec._tick(loop)


def unsteady() -> None:
    """Mark the step in progress as a warm-up or capture call (no-op unless a recorder is active)."""
    rec = _ACTIVE.get()
    if rec is not None:
        rec._unsteady = True


def active() -> bool:
    """Whether a :class:`Recorder` is recording."""
    return _ACTIVE.get() is not None


class LoopStats:
    """What a recorder saw of one loop: ``steps``, per-step ``seconds`` of its steady steps (a list),
    ``warm`` (the seconds of its warm-up and capture steps, :func:`unsteady`), and with counting
    ``flops`` and ``launches`` summed over the counted steps (``counted`` of them)."""

    def __init__(self):
        self.steps = 0
        self.seconds: list[float] = []
        self.warm: list[float] = []
        self.flops = 0
        self.launches = 0
        self.counted = 0

    def per_step(self, skip: int = 1) -> float:
        """Median seconds per steady step, leaving out the first ``skip`` of them (allocations, caches)
        when more remain; the warm-up steps' only when the loop had no steady step."""
        s = self.seconds[skip:] or self.seconds or self.warm
        if not s:
            return float("nan")
        s = sorted(s)
        return s[len(s) // 2]

    def flops_per_step(self) -> float:
        return self.flops / self.counted if self.counted else float("nan")

    def launches_per_step(self) -> float:
        return self.launches / self.counted if self.counted else float("nan")

    def to_dict(self) -> dict:
        return {"steps": self.steps, "seconds_per_step": self.per_step(), "flops_per_step": self.flops_per_step(),
                "launches_per_step": self.launches_per_step(), "counted": self.counted,
                "steady": len(self.seconds)}


class _Counter:
    """FLOPs and non-view ATen ops, switched between loops by the recorder."""

    def __init__(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import FlopCounterMode

        counter = self

        class Ops(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if not _is_view(func):
                    counter.ops += 1
                return func(*args, **(kwargs or {}))

        self.ops = 0
        self._flops = FlopCounterMode(display=False, custom_mapping=_grouped_conv_fix())
        self._mode = Ops()
        self._torch = torch

    def __enter__(self):
        self._flops.__enter__()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        self._flops.__exit__(*exc)

    def flops(self) -> int:
        return int(self._flops.get_total_flops())


def _grouped_conv_fix() -> dict:
    """PyTorch's FLOP formula for a convolution's backward counts the weight gradient of a grouped
    convolution ``groups`` times over (every fused model of ``recollect.grouped`` is a group): the
    corrected formula divides that term by ``groups``. Empty (PyTorch's own) if its internals differ."""
    try:
        import torch
        from torch.utils import flop_counter as fc

        base = getattr(fc.conv_backward_flop, "__wrapped__", None)
        if base is None:
            return {}

        def fixed(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                  _output_padding, _groups, output_mask, out_shape=None, **kw):
            args = (grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                    _output_padding, _groups)
            total = 0
            if output_mask[0]:
                total += base(*args, [True, False], out_shape=out_shape)
            if output_mask[1]:
                total += base(*args, [False, True], out_shape=out_shape) // max(1, int(_groups))
            return total

        return {torch.ops.aten.convolution_backward: fixed}  # FlopCounterMode wraps it (shapes)
    except Exception:  # noqa: BLE001 - an estimate, never a failure
        return {}


def _is_view(func) -> bool:
    try:
        import torch

        return bool(func.is_view) or func in (torch.ops.aten.detach.default, torch.ops.aten.alias.default)
    except AttributeError:
        return False


class Recorder:
    """``with Recorder(count=..., sync=...) as rec: ...`` then ``rec.loops[name]`` (:class:`LoopStats`).

    ``count_steps`` steps of each loop (after ``skip`` steps of warm-up) are counted when ``count``;
    counting slows the steps it covers, so their times are not used.
    """

    def __init__(self, count: bool = False, sync: bool = False, count_steps: int = 1, skip: int = 1):
        self.count, self.sync, self.count_steps, self.skip = count, sync, count_steps, skip
        self.loops: dict[str, LoopStats] = defaultdict(LoopStats)
        self._cur = None
        self._t = None
        self._counter = None
        self._token = None
        self._unsteady = False

    def __enter__(self):
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc):
        self._close(time.perf_counter())
        _ACTIVE.reset(self._token)
        return False

    def _sync(self):
        if self.sync:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()

    def _close(self, now: float) -> None:
        """End the step in progress: attribute its time (and counts) to its loop."""
        if self._cur is None:
            return
        st = self.loops[self._cur]
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            st.flops += self._counter.flops()
            st.launches += self._counter.ops
            st.counted += 1
            self._counter = None
        elif self._unsteady:
            st.warm.append(now - self._t)
        else:
            st.seconds.append(now - self._t)
        self._cur = None
        self._unsteady = False

    def _tick(self, loop: str) -> None:
        self._sync()
        now = time.perf_counter()
        self._close(now)
        st = self.loops[loop]
        st.steps += 1
        self._cur = loop
        if self.count and self.skip < st.steps <= self.skip + self.count_steps:
            self._counter = _Counter().__enter__()
        self._t = time.perf_counter()

    def summary(self) -> dict:
        return {k: v.to_dict() for k, v in self.loops.items()}
