"""Grouped layers: G independent models of one architecture fused into one network.

The experiments of the paper are many small models trained on small images (Figure 2 sweeps 33
autoencoders x 4 learning rates; Tables 1-2 train 160 students; section 5.2 streams examples one at
a time). On a GPU such work is launch-bound: one small model cannot fill the device. Fusing G
models into one network, each model its own *group* of channels, makes every kernel G times
larger while computing exactly the function of G separate models:

* a convolution of G models is one convolution with ``groups=G`` whose weight stacks the G
  weights (each group sees only its own input channels);
* a fully connected layer of G models is one batched matrix product (``baddbmm``);
* BatchNorm normalises per channel, so on the fused channels it is per model already.

Layout: convolutional activations are ``(B, G*C, H, W)`` (group g owns channels
``g*C .. (g+1)*C - 1``), fully connected activations are ``(G, B, F)``. ``to_channels`` and
``from_channels`` convert from and to the ``(G, B, C, H, W)`` batches of CONVENTIONS.md. Every
parameter and buffer has a leading dimension G, so ``select_group`` can cut model g out as a plain
``G = 1`` model, and the optimizers below can give each group its own learning rate. They are the
project's one optimizer path (``GroupedAdam``, ``GroupedSGD``): multi-tensor, with learning rates and
step counts in device tensors, so a whole training step can be captured in a CUDA graph
(``recollect.train.capture``).

Initialisation follows PyTorch's defaults for ``nn.Conv2d`` / ``nn.Linear`` (uniform in
``+-1/sqrt(fan_in)``), drawn per group.
"""
from __future__ import annotations

import copy
import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "to_channels", "from_channels", "GConv2d", "GConvTranspose2d", "GLinear", "GBatchNorm2d",
    "GroupedModule", "select_group", "stack_groups", "GroupedAdam", "GroupedSGD", "make_optimizer",
    "grouped_cross_entropy", "grouped_soft_cross_entropy", "equal_runs",
]


def to_channels(x: torch.Tensor) -> torch.Tensor:
    """(G, B, C, H, W) -> (B, G*C, H, W): each group's images become its own channel block."""
    if x.dim() != 5:
        raise ValueError(f"expected a grouped image batch (G, B, C, H, W), got shape {tuple(x.shape)}")
    g, b, c, h, w = x.shape
    return x.transpose(0, 1).reshape(b, g * c, h, w)


def from_channels(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, G*C, H, W) -> (G, B, C, H, W), the inverse of :func:`to_channels`."""
    b, gc, h, w = x.shape
    return x.reshape(b, groups, gc // groups, h, w).transpose(0, 1)


def _uniform_(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    with torch.no_grad():
        return t.uniform_(-bound, bound)


class GroupedModule(nn.Module):
    """Base class: ``groups`` is read from the parameters, so a sliced copy stays consistent."""

    @property
    def groups(self) -> int:
        for p in self.parameters():
            return p.shape[0]
        for b in self.buffers():
            return b.shape[0]
        raise AttributeError("a grouped module without parameters or buffers has no group count")


class GConv2d(GroupedModule):
    """G independent ``Conv2d(cin, cout, k)`` as one grouped convolution on (B, G*cin, H, W)."""

    def __init__(self, groups, cin, cout, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.stride, self.padding = stride, padding
        fan_in = cin * kernel_size * kernel_size
        self.weight = nn.Parameter(_uniform_(torch.empty(groups, cout, cin, kernel_size, kernel_size), fan_in))
        self.bias = nn.Parameter(_uniform_(torch.empty(groups, cout), fan_in)) if bias else None

    def forward(self, x):
        g, cout = self.weight.shape[:2]
        w = self.weight.reshape(g * cout, *self.weight.shape[2:])
        b = None if self.bias is None else self.bias.reshape(-1)
        return F.conv2d(x, w, b, self.stride, self.padding, groups=g)


class GConvTranspose2d(GroupedModule):
    """G independent ``ConvTranspose2d(cin, cout, k)`` as one grouped transposed convolution."""

    def __init__(self, groups, cin, cout, kernel_size, stride=1, padding=0, output_padding=0, bias=True):
        super().__init__()
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        # PyTorch's ConvTranspose2d computes fan_in from weight.size(1) * k * k = cout * k * k
        fan_in = cout * kernel_size * kernel_size
        self.weight = nn.Parameter(_uniform_(torch.empty(groups, cin, cout, kernel_size, kernel_size), fan_in))
        self.bias = nn.Parameter(_uniform_(torch.empty(groups, cout), fan_in)) if bias else None

    def forward(self, x):
        g, cin = self.weight.shape[:2]
        w = self.weight.reshape(g * cin, *self.weight.shape[2:])
        b = None if self.bias is None else self.bias.reshape(-1)
        return F.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding, groups=g)


class GLinear(GroupedModule):
    """G independent ``Linear(fin, fout)``: (G, B, fin) -> (G, B, fout) by one batched matmul."""

    def __init__(self, groups, fin, fout, bias=True):
        super().__init__()
        self.weight = nn.Parameter(_uniform_(torch.empty(groups, fin, fout), fin))
        self.bias = nn.Parameter(_uniform_(torch.empty(groups, fout), fin)) if bias else None

    def forward(self, x):
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


class GBatchNorm2d(GroupedModule):
    """G independent ``BatchNorm2d(C)``; per-channel statistics on the fused channels are per model."""

    def __init__(self, groups, channels, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(groups, channels))
        self.bias = nn.Parameter(torch.zeros(groups, channels))
        self.register_buffer("running_mean", torch.zeros(groups, channels))
        self.register_buffer("running_var", torch.ones(groups, channels))

    def forward(self, x):
        # views share storage, so batch_norm's in-place running-stat update reaches the buffers
        return F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1),
                            self.weight.reshape(-1), self.bias.reshape(-1),
                            self.training, self.momentum, self.eps)


def select_group(model: nn.Module, g: int) -> nn.Module:
    """A ``G = 1`` copy of model ``g`` of a grouped model (every parameter/buffer sliced on dim 0)."""
    one = copy.deepcopy(model)
    with torch.no_grad():
        for mod in one.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None:
                    mod._parameters[name] = nn.Parameter(p[g:g + 1].clone(), requires_grad=p.requires_grad)
            for name, b in list(mod._buffers.items()):
                if b is not None:
                    mod._buffers[name] = b[g:g + 1].clone()
    return one


def stack_groups(models: list[nn.Module]) -> nn.Module:
    """Fuse ``G = 1`` models of one architecture into one grouped model (inverse of select_group)."""
    if not models:
        raise ValueError("stack_groups needs at least one model")
    out = copy.deepcopy(models[0])
    mods = [dict(m.named_modules()) for m in models]
    with torch.no_grad():
        for name, mod in out.named_modules():
            for pname, p in list(mod._parameters.items()):
                if p is not None:
                    cat = torch.cat([m[name]._parameters[pname] for m in mods], 0)
                    mod._parameters[pname] = nn.Parameter(cat.clone(), requires_grad=p.requires_grad)
            for bname, b in list(mod._buffers.items()):
                if b is not None:
                    mod._buffers[bname] = torch.cat([m[name]._buffers[bname] for m in mods], 0).clone()
    return out


# ------------------------------------------------------------------------------------------------
# optimizers: a learning rate per group, multi-tensor, capturable in a CUDA graph
# ------------------------------------------------------------------------------------------------
_UNSET = object()
_HAS_FUSED_ADAM = hasattr(torch, "_fused_adam_")


def _capturing(device: torch.device) -> bool:
    """True while the current CUDA stream is being captured into a graph (never on the CPU)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _lr_tensor(lr, groups: int):
    """``lr`` (a float, a list, a 0-dim or a (G,) tensor) as a Python float or a tensor of shape () or
    (G,); ``ValueError`` for any other shape."""
    if isinstance(lr, (int, float)):
        return float(lr)
    t = lr if isinstance(lr, torch.Tensor) else torch.as_tensor(lr, dtype=torch.float64)
    if t.dim() != 0 and tuple(t.shape) != (groups,):
        raise ValueError(f"learning rate must be a float or a tensor of shape ({groups},) (one per group), got shape "
                         f"{tuple(t.shape)}; pass one value for all groups or one per group")
    return t


def equal_runs(values) -> list:
    """Maximal runs ``(start, stop, value)`` of equal consecutive values."""
    out, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            out.append((start, i, values[start]))
            start = i
    return out


class _Bucket:
    """The parameters of one param group that share device, dtype and group count G, with their learning
    rates: ``lr`` (G,) and the same spread over every element of every parameter (``lr_full``, one tensor
    per parameter, so that the multi-tensor kernels see lists of equal shapes). ``plans`` caches, per set
    of parameters that have a gradient, the lists a step hands to the kernels."""

    def __init__(self, params):
        p0 = params[0]
        self.params = list(params)
        self.G, self.device, self.dtype = p0.shape[0], p0.device, p0.dtype
        self.lr = torch.zeros(self.G, dtype=p0.dtype, device=p0.device)
        self.lr_full = [torch.zeros_like(p) for p in self.params]
        self.lr_src = _UNSET  # the object of group["lr"] that ``lr`` holds; another one is copied in
        self.runs = None  # on the CPU: runs (start, stop, rate) of groups with equal rates
        self.plans = {}


class _GroupedOptimizer(torch.optim.Optimizer):
    """Shared plumbing of :class:`GroupedAdam` and :class:`GroupedSGD`.

    Every parameter has a leading group dimension G and ``lr`` is a float or a (G,) tensor, so fused
    models (one per group) each get their own rate (Figure 2 sweeps four rates in one fused run).

    Built for CUDA graphs (``recollect.train.capture``):

    * parameters are bucketed by device, dtype and G; a step is a handful of multi-tensor kernels
      per bucket, whatever the number of parameters;
    * the learning rates live in device tensors that are changed in place: by :meth:`set_lr`, or by
      assigning ``group["lr"]`` (a schedule), which the next :meth:`step` or :meth:`sync_lr` copies
      in. A captured graph reads those tensors, so it sees the new rate; call :meth:`sync_lr` before a
      replay after assigning ``group["lr"]`` (``CapturedStep`` does);
    * step counts are device tensors, and once the state exists (created by the first step or by
      :meth:`init_state`) a step allocates nothing that depends on Python state and never
      synchronises with the host. Capture after one eager step (or ``init_state``): creating state,
      a new set of parameters with gradients or a changed learning rate during capture is a
      ``ValueError``;
    * :meth:`load_state_dict` copies into the existing state tensors in place, so a graph captured
      before a resume stays valid, and a resumed run continues bit for bit.

    A parameter whose ``grad`` is None is skipped, as by ``torch.optim``.
    """

    _state_keys: tuple = ()  # per-parameter state tensors of the parameter's shape

    def __init__(self, params, defaults):
        self._buckets: dict[int, list[_Bucket]] = {}
        self._owner: dict[torch.Tensor, _Bucket] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            if p.dim() == 0:
                raise ValueError("grouped optimizers need parameters with a leading group dimension (G, ...); "
                                 "got a 0-dim parameter")

    # ---------------------------------------------------------------- learning rates
    def set_lr(self, lr) -> None:
        """Set the learning rate(s) of every param group: a float or a (G,) tensor, written in place
        into the tensors a captured CUDA graph reads."""
        for group in self.param_groups:
            for p in group["params"]:
                _lr_tensor(lr, p.shape[0])  # validate everything before changing anything
        for gi, group in enumerate(self.param_groups):
            group["lr"] = lr
            for b in self._buckets.get(gi, ()):
                self._write_lr(b, lr)

    def sync_lr(self) -> None:
        """Copy in any learning rate assigned to ``param_groups[i]["lr"]`` since it was last read (in
        place; call before replaying a captured step)."""
        for gi, group in enumerate(self.param_groups):
            for b in self._buckets.get(gi, ()):
                if group["lr"] is not b.lr_src:
                    self._write_lr(b, group["lr"])

    def _write_lr(self, b: _Bucket, lr) -> None:
        t = _lr_tensor(lr, b.G)
        if _capturing(b.device):
            raise ValueError("the learning rate changed during CUDA graph capture; call sync_lr() (or set_lr) "
                             "before capturing")
        if isinstance(t, float) or (t.dim() == 0 and t.device.type == "cpu"):
            b.lr.fill_(t)  # a scalar kernel argument: no host-to-device copy
        else:
            b.lr.copy_(t)
        torch._foreach_copy_(b.lr_full, [b.lr.view(-1, *([1] * (p.dim() - 1))).expand_as(p) for p in b.params])
        if b.device.type == "cpu":  # host values, read without a device sync (no graphs on the CPU)
            b.runs = equal_runs(b.lr.tolist())
        b.lr_src = lr

    # ---------------------------------------------------------------- state
    def init_state(self) -> None:
        """Create the state of every trainable parameter now (instead of at the first step), e.g. to
        capture the very first step in a CUDA graph."""
        for gi, group in enumerate(self.param_groups):
            new = [p for p in group["params"] if p.requires_grad and p not in self._owner]
            if new:
                self._add_buckets(gi, new)

    def _add_buckets(self, gi: int, params) -> None:
        if any(_capturing(p.device) for p in params):
            raise ValueError("optimizer state cannot be created during CUDA graph capture: run one eager step "
                             "(or call init_state()) before capturing")
        keys: dict = {}
        for p in params:
            keys.setdefault((p.device, p.dtype, p.shape[0]), []).append(p)
        group = self.param_groups[gi]
        for ps in keys.values():
            b = _Bucket(ps)
            self._write_lr(b, group["lr"])
            self._new_state(b, group)
            b.plans[tuple(range(len(ps)))] = self._plan(b, tuple(range(len(ps))))
            self._buckets.setdefault(gi, []).append(b)
            for p in ps:
                self._owner[p] = b
            self._expose_state(b)

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict` (that of this class, of the earlier per-parameter GroupedAdam with
        keys ``step``/``m``/``v``, or of ``torch.optim.Adam`` / ``SGD``), copying into the existing
        state tensors in place. State of another model (other shapes, another group count) is a
        ``ValueError`` and changes nothing."""
        old_groups, old_state = self.param_groups, self.state
        super().load_state_dict(state_dict)
        loaded = dict(self.state)
        try:
            for group in self.param_groups:
                for p in group["params"]:
                    _lr_tensor(group["lr"], p.shape[0])
                    for k, v in loaded.get(p, {}).items():
                        if k in self._state_keys and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(p.shape):
                            raise ValueError(f"optimizer state {k!r} has shape {tuple(v.shape)} but its parameter "
                                             f"{tuple(p.shape)}: the state belongs to another model or group count")
        except ValueError:
            self.param_groups, self.state = old_groups, old_state
            raise
        self.state = defaultdict(dict)
        for gi, group in enumerate(self.param_groups):
            new = [p for p in group["params"] if p not in self._owner and (p.requires_grad or p in loaded)]
            if new:
                self._add_buckets(gi, new)
            for b in self._buckets.get(gi, ()):
                for i, p in enumerate(b.params):
                    self._fill_state(b, i, loaded.get(p, {}))
                self._expose_state(b)
                self._write_lr(b, group["lr"])  # group["lr"] is the loaded one now

    # ---------------------------------------------------------------- the step
    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient (no host synchronisation once the state
        exists; see the class docstring). ``closure`` is evaluated first, as in ``torch.optim``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            if any(p.grad is not None and p not in self._owner for p in group["params"]):
                self._add_buckets(gi, [p for p in group["params"] if p not in self._owner
                                       and (p.requires_grad or p.grad is not None)])
            for b in self._buckets.get(gi, ()):
                live = tuple(i for i, p in enumerate(b.params) if p.grad is not None)
                if not live:
                    continue
                plan = b.plans.get(live)
                if plan is None:
                    if _capturing(b.device):
                        raise ValueError("a new set of parameters with gradients during CUDA graph capture: "
                                         "run one eager step with the same gradients before capturing")
                    plan = b.plans[live] = self._plan(b, live)
                if group["lr"] is not b.lr_src:
                    self._write_lr(b, group["lr"])
                self._update(b, plan, [b.params[i].grad for i in live], group)
        return loss

    # subclasses: allocate / restore / expose state, build the lists of one step, update
    def _new_state(self, b: _Bucket, group: dict) -> None:
        raise NotImplementedError

    def _fill_state(self, b: _Bucket, i: int, st: dict) -> None:
        raise NotImplementedError

    def _expose_state(self, b: _Bucket) -> None:
        raise NotImplementedError

    def _plan(self, b: _Bucket, live: tuple) -> dict:
        raise NotImplementedError

    def _update(self, b: _Bucket, plan: dict, grads: list, group: dict) -> None:
        raise NotImplementedError


class GroupedAdam(_GroupedOptimizer):
    """Adam (Kingma & Ba; no weight decay, bias-corrected) with one learning rate per group.

    Adam acts elementwise, so on fused parameters it is exactly G separate Adams; with one rate it
    matches ``torch.optim.Adam``. On CUDA a step is four multi-tensor kernels per bucket, whatever
    the number of parameters and of distinct rates (see :class:`_GroupedOptimizer`): the step counts
    ``+= 1``; a copy ``s`` of the parameters; PyTorch's fused Adam kernel with learning rate 1 on
    ``s`` (it reads the step counts on the device), so ``s = p - u`` with ``u`` Adam's unit-rate
    update; and ``p <- lerp(p, s, lr) = p - lr * u`` with the rate of each element's group, read
    from a device tensor. On the CPU, where nothing is captured and memory traffic is what costs,
    the fused kernel updates the parameters directly, once per run of consecutive groups with equal
    rates (the rates are host values there); ``cpu_direct = False`` gives the CPU the CUDA
    arithmetic instead (the tests compare the two). Where the fused kernel is missing (devices
    other than CPU and CUDA) plain tensor operations compute the CUDA arithmetic. State per
    parameter: ``step`` (float32, on the parameter's device), ``m``, ``v``.
    """

    _state_keys = ("m", "v", "exp_avg", "exp_avg_sq")
    cpu_direct = True  # class default; set on an instance before its first step to change it

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    def _new_state(self, b, group):
        b.steps = torch.zeros(len(b.params), dtype=torch.float32, device=b.device)
        b.m = [torch.zeros_like(p) for p in b.params]
        b.v = [torch.zeros_like(p) for p in b.params]
        if not _HAS_FUSED_ADAM or b.device.type not in ("cpu", "cuda"):
            b.path = "plain"
        elif b.device.type == "cpu" and self.cpu_direct:
            b.path = "direct"
        else:
            b.path = "lerp"
        b.scratch = None if b.path == "direct" else [torch.zeros_like(p) for p in b.params]

    def _fill_state(self, b, i, st):
        step = st.get("step", 0.0)
        if isinstance(step, torch.Tensor):
            b.steps[i].copy_(step.reshape(()))
        else:
            b.steps[i].fill_(float(step))
        for names, buf in ((("m", "exp_avg"), b.m[i]), (("v", "exp_avg_sq"), b.v[i])):  # ours, torch.optim.Adam's
            src = next((st[k] for k in names if k in st), None)
            if src is None:
                buf.zero_()
            else:
                buf.copy_(src)

    def _expose_state(self, b):
        for i, p in enumerate(b.params):
            self.state[p] = {"step": b.steps[i], "m": b.m[i], "v": b.v[i]}

    def _plan(self, b, live):
        mask = None
        if len(live) != len(b.params):
            mask = torch.zeros(len(b.params), dtype=torch.float32)
            mask[list(live)] = 1.0
            mask = mask.to(b.device)
        pick = lambda xs: None if xs is None else [xs[i] for i in live]  # noqa: E731
        return dict(params=pick(b.params), m=pick(b.m), v=pick(b.v), scratch=pick(b.scratch),
                    steps=[b.steps[i] for i in live], lr=pick(b.lr_full), mask=mask, runs=None, views=None)

    def _update(self, b, plan, grads, group):
        beta1, beta2 = group["betas"]
        kw = dict(beta1=beta1, beta2=beta2, weight_decay=0.0, eps=group["eps"], amsgrad=False, maximize=False)
        if plan["mask"] is None:
            b.steps.add_(1.0)
        else:
            b.steps.add_(plan["mask"])
        if b.path == "direct":
            if plan["runs"] is not b.runs:  # slices of parameters and moments, per run of equal rates
                plan["runs"] = b.runs
                plan["views"] = [(a, e, lr, [p[a:e] for p in plan["params"]], [m[a:e] for m in plan["m"]],
                                  [v[a:e] for v in plan["v"]]) for a, e, lr in b.runs]
            for a, e, lr, ps, ms, vs in plan["views"]:
                torch._fused_adam_(ps, [g[a:e] for g in grads], ms, vs, [], plan["steps"], lr=lr, **kw)
            return
        s = plan["scratch"]
        torch._foreach_copy_(s, plan["params"])
        if b.path == "lerp":
            torch._fused_adam_(s, grads, plan["m"], plan["v"], [], plan["steps"], lr=1.0, **kw)
        else:
            _unit_adam(s, grads, plan["m"], plan["v"], plan["steps"], beta1, beta2, group["eps"])
        torch._foreach_lerp_(plan["params"], s, plan["lr"])


def _unit_adam(params, grads, ms, vs, steps, beta1, beta2, eps) -> None:
    """Adam with learning rate 1 in plain tensor operations (where the fused kernel is missing)."""
    torch._foreach_lerp_(ms, grads, 1 - beta1)
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, grads, grads, value=1 - beta2)
    for p, m, v, t in zip(params, ms, vs, steps):
        t = t.double()  # the bias corrections in double precision, as the fused kernel computes them
        bc1 = 1 - torch.pow(beta1, t)
        bc2 = (1 - torch.pow(beta2, t)).sqrt()
        p.sub_(m / ((v.sqrt() / bc2).add_(eps)) / bc1)


class GroupedSGD(_GroupedOptimizer):
    """SGD with one learning rate per group (GEM's and the paper's online baselines): one
    multi-tensor kernel per bucket, ``p -= lr * g`` with each element's group rate. ``momentum``
    (default 0, as in GEM's code) keeps a ``momentum_buffer`` per parameter as ``torch.optim.SGD``
    does (no dampening, no Nesterov)."""

    _state_keys = ("momentum_buffer",)

    def __init__(self, params, lr=0.1, momentum=0.0):
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum))

    def _new_state(self, b, group):
        b.buf = [torch.zeros_like(p) for p in b.params] if group["momentum"] else None

    def _fill_state(self, b, i, st):
        if b.buf is not None:
            if "momentum_buffer" in st and st["momentum_buffer"] is not None:
                b.buf[i].copy_(st["momentum_buffer"])
            else:
                b.buf[i].zero_()

    def _expose_state(self, b):
        if b.buf is not None:
            for i, p in enumerate(b.params):
                self.state[p] = {"momentum_buffer": b.buf[i]}

    def _plan(self, b, live):
        pick = lambda xs: None if xs is None else [xs[i] for i in live]  # noqa: E731
        return dict(params=pick(b.params), lr=pick(b.lr_full), buf=pick(b.buf))

    def _update(self, b, plan, grads, group):
        momentum = group["momentum"]
        src = grads
        if momentum:
            if plan["buf"] is None:
                raise ValueError("momentum was switched on after the optimizer's state was created; "
                                 "give it at construction")
            torch._foreach_mul_(plan["buf"], momentum)
            torch._foreach_add_(plan["buf"], grads)
            src = plan["buf"]
        torch._foreach_addcmul_(plan["params"], src, plan["lr"], value=-1.0)


def make_optimizer(params, name: str, lr, **kw):
    """``GroupedAdam`` (``name="adam"``) or ``GroupedSGD`` (``"sgd"``) with ``lr`` a float or one per
    group (a list or a (G,) tensor)."""
    if isinstance(lr, (list, tuple)):
        lr = torch.as_tensor(lr, dtype=torch.float32)
    if name == "adam":
        return GroupedAdam(params, lr=lr, **kw)
    if name == "sgd":
        return GroupedSGD(params, lr=lr, **kw)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


def grouped_cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy per group: logits (G, B, K), integer targets (G, B) -> (G,) (or (G, B))."""
    g, b, k = logits.shape
    loss = F.cross_entropy(logits.reshape(g * b, k), y.reshape(g * b), reduction="none").view(g, b)
    return loss.mean(1) if reduction == "mean" else loss


def grouped_soft_cross_entropy(logits: torch.Tensor, p: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against soft targets (a teacher's probabilities), per group -> (G,) (or (G, B))."""
    loss = -(p * F.log_softmax(logits, -1)).sum(-1)
    return loss.mean(1) if reduction == "mean" else loss
