"""Reasoning models and students, grouped (see ``recollect.grouped``).

* ``LeNet``: the teacher and CNN student of section 5.1 (LeCun et al. 1998; conv 20 and 50 filters
  of size 5, max-pooling, 500 hidden units).
* ``MLP``: the student of Table 2, two hidden layers of 300 units.
* ``ResNet18``: GEM's reduced ResNet-18 (Lopez-Paz & Ranzato 2017: BasicBlocks [2, 2, 2, 2], ``nf``
  = 20 filters at the first stage, 3x3 stem without max-pooling, global average pooling), used for
  incremental CIFAR-100 (section 5.2) and, with one input channel, for 28x28 Omniglot.

All take a batch ``(G, B, C, H, W)`` (uint8 or float) and return logits ``(G, B, K)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..grouped import GBatchNorm2d, GConv2d, GLinear, GroupedModule, from_channels, to_channels

__all__ = ["LeNet", "MLP", "ResNet18", "make_classifier"]


def _as_float(x):
    return x.float() / 255.0 if x.dtype == torch.uint8 else x


class LeNet(GroupedModule):
    def __init__(self, n_classes=10, image_shape=(1, 28, 28), groups=1):
        super().__init__()
        c, h, _ = image_shape
        self.conv1 = GConv2d(groups, c, 20, 5)
        self.conv2 = GConv2d(groups, 20, 50, 5)
        side = ((h - 4) // 2 - 4) // 2
        self.fc1 = GLinear(groups, 50 * side * side, 500)
        self.fc2 = GLinear(groups, 500, n_classes)

    def forward(self, x, return_features=False):
        g, b = x.shape[:2]
        h = F.max_pool2d(F.relu(self.conv1(to_channels(_as_float(x)))), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        feat = F.relu(self.fc1(from_channels(h, g).reshape(g, b, -1)))
        out = self.fc2(feat)
        return (out, feat) if return_features else out


class MLP(GroupedModule):
    def __init__(self, n_classes=10, image_shape=(1, 28, 28), groups=1, hidden=300):
        super().__init__()
        fin = int(torch.tensor(image_shape).prod())
        self.fc1 = GLinear(groups, fin, hidden)
        self.fc2 = GLinear(groups, hidden, hidden)
        self.fc3 = GLinear(groups, hidden, n_classes)

    def forward(self, x, return_features=False):
        g, b = x.shape[:2]
        h = F.relu(self.fc1(_as_float(x).reshape(g, b, -1)))
        feat = F.relu(self.fc2(h))
        out = self.fc3(feat)
        return (out, feat) if return_features else out


class _BasicBlock(nn.Module):
    def __init__(self, groups, cin, cout, stride):
        super().__init__()
        self.conv1 = GConv2d(groups, cin, cout, 3, stride, 1, bias=False)
        self.bn1 = GBatchNorm2d(groups, cout)
        self.conv2 = GConv2d(groups, cout, cout, 3, 1, 1, bias=False)
        self.bn2 = GBatchNorm2d(groups, cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(GConv2d(groups, cin, cout, 1, stride, 0, bias=False),
                                          GBatchNorm2d(groups, cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet18(GroupedModule):
    """GEM's reduced ResNet-18 (``nf=20``); works for 32x32x3 and 28x28x1 inputs."""

    def __init__(self, n_classes=100, image_shape=(3, 32, 32), groups=1, nf=20):
        super().__init__()
        c = image_shape[0]
        self.conv1 = GConv2d(groups, c, nf, 3, 1, 1, bias=False)
        self.bn1 = GBatchNorm2d(groups, nf)
        blocks, cin = [], nf
        for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
            for s in (stride, 1):
                blocks.append(_BasicBlock(groups, cin, nf * mult, s))
                cin = nf * mult
        self.blocks = nn.Sequential(*blocks)
        self.linear = GLinear(groups, cin, n_classes)
        self.feature_dim = cin

    def forward(self, x, return_features=False):
        g = x.shape[0]
        h = F.relu(self.bn1(self.conv1(to_channels(_as_float(x)))))
        h = self.blocks(h)
        feat = from_channels(h.mean((2, 3), keepdim=True), g).flatten(2)  # (G, B, 8nf)
        out = self.linear(feat)
        return (out, feat) if return_features else out


_CLASSIFIERS = {"lenet": LeNet, "mlp": MLP, "resnet18": ResNet18}


def make_classifier(name: str, n_classes: int, image_shape, groups: int = 1, **kw) -> nn.Module:
    """Build a classifier by name: ``lenet``, ``mlp`` or ``resnet18``."""
    try:
        cls = _CLASSIFIERS[name]
    except KeyError:
        raise ValueError(f"unknown classifier {name!r}; choose one of {sorted(_CLASSIFIERS)}") from None
    return cls(n_classes=n_classes, image_shape=tuple(image_shape), groups=groups, **kw)
