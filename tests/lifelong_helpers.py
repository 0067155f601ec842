"""Shared by the lifelong tests: a tiny synthetic task stream, and a snapshot of Python state."""
import torch

from recollect.data import ImageSet, TaskStream


def synth(T=3, per=8, cls=3, seed=0, test_per_class=2, shape=(1, 28, 28)):
    """T tasks of `cls` classes each, random images (a tiny TaskStream)."""
    g = torch.Generator().manual_seed(seed)
    train, test, tc = [], [], []
    for t in range(T):
        c = torch.arange(t * cls, (t + 1) * cls)
        y = c[torch.arange(per) % cls]
        train.append(ImageSet(torch.randint(0, 256, (per, *shape), generator=g, dtype=torch.uint8), y,
                              torch.full((per,), t)))
        yt = c.repeat(test_per_class)
        test.append(ImageSet(torch.randint(0, 256, (len(yt), *shape), generator=g, dtype=torch.uint8), yt,
                             torch.full((len(yt),), t)))
        tc.append(c)
    return TaskStream("synth", train, test, tc, T * cls, shape)


def python_state(*roots) -> dict:
    """Every Python value (numbers, strings, None, container lengths) reachable from ``roots`` through
    attributes, dicts, lists and tuples; tensors and generators (device state) are left out. Two
    snapshots differ exactly when a step changed Python state that a CUDA graph would freeze."""
    out, seen = {}, set()

    def walk(obj, path, depth):
        if isinstance(obj, (bool, int, float, str, type(None))):
            out[path] = obj
            return
        if isinstance(obj, (torch.Tensor, torch.Generator, torch.device, torch.dtype)) or depth > 12 \
                or id(obj) in seen or callable(obj) and not hasattr(obj, "__dict__"):
            return
        seen.add(id(obj))
        if isinstance(obj, dict):
            out[path + "#len"] = len(obj)
            for i, (k, v) in enumerate(obj.items()):
                walk(v, f"{path}[{k if isinstance(k, (str, int)) else i}]", depth + 1)
        elif isinstance(obj, (list, tuple)):
            out[path + "#len"] = len(obj)
            for i, v in enumerate(obj):
                walk(v, f"{path}[{i}]", depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            for k, v in vars(obj).items():
                walk(v, f"{path}.{k}", depth + 1)

    for i, r in enumerate(roots):
        walk(r, f"root{i}", 0)
    return out
