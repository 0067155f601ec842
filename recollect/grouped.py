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
``G = 1`` model, and the optimizers below can give each group its own learning rate.

Initialisation follows PyTorch's defaults for ``nn.Conv2d`` / ``nn.Linear`` (uniform in
``+-1/sqrt(fan_in)``), drawn per group.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "to_channels", "from_channels", "GConv2d", "GConvTranspose2d", "GLinear", "GBatchNorm2d",
    "GroupedModule", "select_group", "stack_groups", "GroupedAdam", "GroupedSGD",
    "grouped_cross_entropy", "grouped_soft_cross_entropy",
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


def _group_lr(lr, groups: int, ref: torch.Tensor) -> torch.Tensor:
    lr = torch.as_tensor(lr, dtype=ref.dtype, device=ref.device)
    if lr.dim() == 0:
        lr = lr.expand(groups)
    if lr.shape != (groups,):
        raise ValueError(f"learning rate must be a float or a tensor of shape ({groups},), got {tuple(lr.shape)}")
    return lr


class _GroupedOptimizer(torch.optim.Optimizer):
    """Shared plumbing: every parameter has a leading group dim; ``lr`` is a float or (G,) tensor."""

    def __init__(self, params, defaults):
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() == 0:
                    raise ValueError("grouped optimizers need parameters with a leading group dimension")

    def set_lr(self, lr) -> None:
        """Change the learning rate(s) of every parameter (float or (G,) tensor)."""
        for group in self.param_groups:
            group["lr"] = lr
            for p in group["params"]:
                st = self.state[p]
                if "lr" in st:  # in place, so a captured CUDA graph sees the new value
                    st["lr"].copy_(self._lr_view(group, p))
                    st["lr_src"] = lr

    @staticmethod
    def _lr_view(group, p):
        lr = _group_lr(group["lr"], p.shape[0], p)
        return lr.view(-1, *([1] * (p.dim() - 1)))

    def _lr_of(self, group, p):
        """The (G, 1, ...) learning-rate tensor of ``p``, rebuilt whenever ``group["lr"]`` was
        reassigned (a schedule), kept otherwise (a captured CUDA graph must not create tensors)."""
        st = self.state[p]
        if st.get("lr_src") is not group["lr"] or "lr" not in st:
            st["lr"] = self._lr_view(group, p)
            st["lr_src"] = group["lr"]
        return st["lr"]


class GroupedAdam(_GroupedOptimizer):
    """Adam (Kingma & Ba) with one learning rate per group. Adam acts elementwise, so on fused
    parameters it is exactly G separate Adams; with a scalar lr it matches ``torch.optim.Adam``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        # the step count is a tensor on the parameter's device, so a captured CUDA graph replays
        # the bias corrections correctly (a Python int would be frozen into the graph)
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float64 if p.dtype == torch.float64 else torch.float32, device=p.device)
                    st["m"] = torch.zeros_like(p)
                    st["v"] = torch.zeros_like(p)
                if st["step"].device != p.device:  # load_state_dict leaves a tensor "step" on the CPU
                    st["step"] = st["step"].to(p.device)
                st["step"] += 1
                t = st["step"]
                st["m"].lerp_(p.grad, 1 - b1)
                st["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (st["v"].sqrt() / torch.sqrt(1 - b2 ** t)).add_(group["eps"])
                p.sub_((self._lr_of(group, p) / (1 - b1 ** t)) * st["m"] / denom)


class GroupedSGD(_GroupedOptimizer):
    """Plain SGD with one learning rate per group (GEM's and the paper's online baselines)."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(self._lr_of(group, p) * p.grad)


def grouped_cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy per group: logits (G, B, K), integer targets (G, B) -> (G,) (or (G, B))."""
    g, b, k = logits.shape
    loss = F.cross_entropy(logits.reshape(g * b, k), y.reshape(g * b), reduction="none").view(g, b)
    return loss.mean(1) if reduction == "mean" else loss


def grouped_soft_cross_entropy(logits: torch.Tensor, p: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against soft targets (a teacher's probabilities), per group -> (G,) (or (G, B))."""
    loss = -(p * F.log_softmax(logits, -1)).sum(-1)
    return loss.mean(1) if reduction == "mean" else loss
