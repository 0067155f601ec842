"""Episodic buffers filled by reservoir sampling (paper sections 4.3, 4.4 and 5.2).

* :class:`RecollectionBuffer` -- the recollection buffer of section 4.3: it stores the discrete
  latent code of each experience "when the input was first experienced", packed into exactly
  ``packed_bits(c, l)`` bits per code (``recollect.codes``), with the class and task index kept
  beside each code (section 4.4: "already in a very compact representation").
* :class:`RehearsalBuffer` -- the lossless buffer of the rehearsal baselines (Tables 3 and 4): raw
  uint8 images at ``8 * C * H * W`` bits each.

Both hold ``G`` independent buffers (``groups=G``, one per fused model of ``recollect.grouped``)
and are filled by reservoir sampling (section 5.2: "all of our models store examples in their
buffer following the reservoir sampling procedure"), Vitter's algorithm R, independently per group;
they share that logic and uniform sampling through :class:`ReservoirBuffer`.

Two ways in and out:

* the checked API (``add``, ``append_all``, ``sample``, ``get``): validates its arguments, so it
  reads values on the host (a synchronisation on a GPU); for filling a buffer once, or offline use;
* the step's fast path (``offer``, ``draw``, ``read``): what the lifelong learner calls once per
  incoming example (``recollect.train.lifelong``). The number of examples offered lives on the
  device (``count``), every reservoir decision is made there (one uniform draw per group), and
  nothing is validated or read back, so the whole per-example step can be replayed from a CUDA
  graph. ``seen`` and ``len()`` read ``count`` back to the host: call them between steps.
"""
from __future__ import annotations

import math
import numbers

import torch

from .codes import (_pack, _unpack, _write_flat, check_codes, packed_bits, packing_plan, read_rows, read_span,
                    record_bytes, write_row_where, write_span)

__all__ = ["ReservoirBuffer", "RecollectionBuffer", "RehearsalBuffer"]

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _pos_int(value, name: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}; {hint}")
    return int(value)


def _check_generator(generator) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator (randomness is explicit), got {type(generator).__name__}; "
                         f"e.g. recollect.utils.generator(seed)")
    return generator


class ReservoirBuffer:
    """Common base: ``G`` reservoirs of ``capacity`` items with labels ``y`` and tasks (section 5.2).

    Subclasses store the items (codes or images) through the hooks ``_check_items``,
    ``_write_rows`` (flat records), ``_write_span`` (rows ``start .. start + n`` of every group),
    ``_read_rows`` and the ``_payload_*`` state hooks. ``y`` and ``task`` are int64 ``(G, capacity)``.
    """

    kind = "reservoir"

    def __init__(self, capacity, groups=1, device="cpu"):
        self.capacity = _pos_int(capacity, "capacity", "a buffer must hold at least one item")
        self.groups = _pos_int(groups, "groups", "use groups=1 for a single buffer")
        self.device = torch.device(device)
        self.y = torch.zeros(self.groups, self.capacity, dtype=torch.int64, device=self.device)
        self.task = torch.zeros(self.groups, self.capacity, dtype=torch.int64, device=self.device)
        #: examples offered so far (the same for every group), an int64 scalar on the device
        self.count = torch.zeros((), dtype=torch.int64, device=self.device)
        self._g = torch.arange(self.groups, device=self.device)

    # ---------------------------------------------------------------- bookkeeping
    @property
    def seen(self) -> int:
        """Number of examples offered so far (the same for every group); read from the device."""
        return int(self.count)

    def __len__(self) -> int:
        """Number of filled slots: ``min(seen, capacity)`` (the same for every group)."""
        return min(self.seen, self.capacity)

    @property
    def bits_per_item(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def item_bits_total(self) -> int:
        """Bits of the stored items of one group when full: ``capacity * bits_per_item``."""
        return self.capacity * self.bits_per_item

    def _labels(self, y, name: str, n: int) -> torch.Tensor:
        if not isinstance(y, torch.Tensor) or y.dtype not in _INT_DTYPES or tuple(y.shape) != (self.groups, n):
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"{name} must be an integer tensor of shape (G, n) = {(self.groups, n)}, got {got}")
        return y.to(self.device, torch.int64)

    def _check_all(self, items, y, task):
        items, n = self._check_items(items)
        return items, self._labels(y, "y", n), self._labels(task, "task", n), n

    # ---------------------------------------------------------------- writing
    def append_all(self, items, y, task) -> None:
        """Write ``n`` items per group into the next free slots, in order, with no sampling.

        The fast path for filling a buffer once (e.g. the 50,000 codes of section 5.1). Equivalent
        to :meth:`add` while the buffer does not overflow; ``ValueError`` if it would.
        """
        items, y, task, n = self._check_all(items, y, task)
        seen = self.seen
        if seen + n > self.capacity:
            raise ValueError(f"append_all of {n} items overflows the buffer: {seen} already stored, capacity "
                             f"{self.capacity}; use add() for reservoir sampling or a larger capacity")
        self._fill(items, y, task, seen)
        self.count.add_(n)

    def _fill(self, items, y, task, start: int) -> None:
        n = y.shape[1]
        if n == 0:
            return
        self._write_span(start, items)
        self.y[:, start:start + n] = y
        self.task[:, start:start + n] = task

    def add(self, items, y, task, generator) -> None:
        """Offer ``n`` items per group to the reservoirs (Vitter's algorithm R, independently per group).

        The item preceded by ``s`` offered items goes to slot ``s`` while ``s < capacity``; after that
        ``j`` is drawn uniformly from ``[0, s]`` (one draw per group, from ``generator``) and the item
        replaces slot ``j`` if ``j < capacity``. Every item offered so far is then in the buffer with
        probability ``capacity / seen``. Items of one call are processed in order (later ones win).
        """
        generator = _check_generator(generator)
        items, y, task, n = self._check_all(items, y, task)
        s0, G, cap = self.seen, self.groups, self.capacity
        n_fill = max(0, min(n, cap - s0))
        self._fill(items[:, :n_fill], y[:, :n_fill], task[:, :n_fill], s0)
        m = n - n_fill
        if m > 0:
            draws = [torch.randint(0, s0 + i + 1, (G,), generator=generator, device=generator.device)
                     for i in range(n_fill, n)]
            j = torch.stack(draws, dim=1).to(self.device)  # (G, m)
            live = j < cap
            if m > 1:
                # several replacements of one slot in this call: the last one wins
                order = torch.arange(m, device=self.device).expand(G, m)
                slot = torch.where(live, j, torch.full_like(j, cap))
                last = torch.full((G, cap + 1), -1, dtype=torch.int64, device=self.device)
                last.scatter_reduce_(1, slot, order, reduce="amax")
                live &= last.gather(1, slot) == order
            g, i = live.nonzero(as_tuple=True)
            if g.numel():
                r = j[g, i]
                src = i + n_fill
                self._write_rows(g, r, items[g, src], one_per_group=(m == 1))
                self.y[g, r] = y[g, src]
                self.task[g, r] = task[g, src]
        self.count.add_(n)

    # ---------------------------------------------------------------- the step's fast path
    def _check_device(self, generator) -> None:
        if not isinstance(generator, torch.Generator) or generator.device.type != self.device.type:
            got = generator.device if isinstance(generator, torch.Generator) else type(generator).__name__
            raise ValueError(f"the fast path draws on the buffer's device ({self.device}); got a generator on {got}: "
                             f"use torch.Generator(device={str(self.device)!r})")

    def offer(self, items, y, task, generator) -> None:
        """Offer ONE item per group (Vitter's algorithm R, section 5.2), decided on the device.

        ``items`` ``(G, ...)`` (codes ``(G, c)`` int64 in ``[0, l)`` or images ``(G, C, H, W)``
        uint8), ``y`` and ``task`` int64 ``(G,)``, ``generator`` on the buffer's device. With
        ``s = count`` items offered before: slot ``s`` while ``s < capacity``, else ``j`` uniform in
        ``[0, s]`` (one float64 draw per group, drawn every call) replaces slot ``j`` if
        ``j < capacity``: the rule of :meth:`add`, as a masked write instead of a branch. Nothing is
        validated (items come from the learner itself) and nothing is read back to the host."""
        self._check_device(generator)
        cap = self.capacity
        s = self.count
        u = torch.rand(self.groups, dtype=torch.float64, generator=generator, device=generator.device)
        j = (u * (s + 1).to(torch.float64)).long()  # uniform in [0, s]
        filling = s < cap
        write = filling | (j < cap)
        slot = torch.where(filling, s, j).clamp_(max=cap - 1)
        self._write_where(slot, items, write)
        g = self._g
        self.y[g, slot] = torch.where(write, y, self.y[g, slot])
        self.task[g, slot] = torch.where(write, task, self.task[g, slot])
        self.count.add_(1)

    def draw(self, n: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` slot indices per group, uniform with replacement over the filled slots, and whether
        any slot is filled: ``(idx (G, n) int64, any (0-dim bool))``, on the device, no sync. While
        the buffer is empty ``idx`` is 0 and ``any`` False (the caller substitutes, e.g. with
        ``torch.where``). One float64 draw per index from ``generator`` (on the buffer's device)."""
        self._check_device(generator)
        filled = self.count.clamp(max=self.capacity)
        u = torch.rand((self.groups, int(n)), dtype=torch.float64, generator=generator, device=generator.device)
        idx = torch.minimum((u * filled.to(torch.float64)).long(), (filled - 1).clamp(min=0))
        return idx, filled > 0

    def read(self, idx):
        """Items, labels and tasks at slots ``idx`` ``(G, n)`` drawn by :meth:`draw`: no validation and
        no host synchronisation (:meth:`get` checks its indices)."""
        return self._read_rows(idx), self.y.gather(1, idx), self.task.gather(1, idx)

    # ---------------------------------------------------------------- reading
    def sample_indices(self, n, generator) -> torch.Tensor:
        """``(G, n)`` slot indices drawn uniformly with replacement from the filled part, per group."""
        generator = _check_generator(generator)
        n = _pos_int(n, "n (number of samples)", "ask for at least one sample")
        if len(self) == 0:
            raise ValueError("the buffer is empty: add examples before sampling")
        idx = torch.randint(0, len(self), (self.groups, n), generator=generator, device=generator.device)
        return idx.to(self.device)

    def get(self, indices):
        """Items, labels and tasks at slot ``indices`` ``(G, n)`` (e.g. for active sampling, section 5.1)."""
        if not isinstance(indices, torch.Tensor) or indices.dtype not in _INT_DTYPES or indices.dim() != 2 \
                or indices.shape[0] != self.groups:
            got = f"{indices.dtype} {tuple(indices.shape)}" if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise ValueError(f"indices must be an integer tensor (G, n) with G={self.groups}, got {got}")
        indices = indices.to(self.device, torch.int64)
        if indices.numel() and (bool((indices < 0).any()) or bool((indices >= len(self)).any())):
            raise ValueError(f"indices must lie in [0, {len(self)}) (the filled slots), got values in "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return self._read_rows(indices), self.y.gather(1, indices), self.task.gather(1, indices)

    def sample(self, n, generator):
        """``n`` items per group drawn uniformly with replacement: ``(items, y (G, n), task (G, n))``."""
        return self.get(self.sample_indices(n, generator))

    # ---------------------------------------------------------------- state
    def _meta(self) -> dict:
        return {"kind": self.kind, "capacity": self.capacity, "groups": self.groups}

    def state_dict(self) -> dict:
        """Everything needed to resume: shape, ``seen``, labels, tasks and the stored items."""
        d = dict(self._meta())
        d.update(seen=self.seen, y=self.y.clone(), task=self.task.clone())
        d.update(self._payload_state())
        return d

    def load_state_dict(self, d: dict) -> None:
        """Restore a :meth:`state_dict`; ``ValueError`` if it belongs to a buffer of another shape."""
        if not isinstance(d, dict):
            raise ValueError("load_state_dict expects the dict returned by state_dict()")
        for key, want in self._meta().items():
            if d.get(key) != want:
                raise ValueError(f"cannot load a buffer state with {key}={d.get(key)!r} into a buffer with "
                                 f"{key}={want!r}; build the buffer with the same arguments as the saved one")
        seen = d.get("seen")
        if isinstance(seen, bool) or not isinstance(seen, numbers.Integral) or seen < 0:
            raise ValueError(f"state has an invalid seen={seen!r}")
        for key in ("y", "task"):
            t = d.get(key)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (self.groups, self.capacity):
                raise ValueError(f"state's {key!r} must be a tensor {(self.groups, self.capacity)}")
        self._payload_load(d)
        self.y.copy_(d["y"].to(self.device, torch.int64))
        self.task.copy_(d["task"].to(self.device, torch.int64))
        self.count.fill_(int(seen))

    # ---------------------------------------------------------------- hooks
    def _check_items(self, items):  # pragma: no cover - abstract
        raise NotImplementedError

    def _write_rows(self, g, r, items, one_per_group: bool):  # pragma: no cover - abstract
        raise NotImplementedError

    def _write_span(self, start: int, items):  # pragma: no cover - abstract
        raise NotImplementedError

    def _write_where(self, slot, items, mask):  # pragma: no cover - abstract
        raise NotImplementedError

    def _read_rows(self, rows):  # pragma: no cover - abstract
        raise NotImplementedError

    def _payload_state(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _payload_load(self, d: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class RecollectionBuffer(ReservoirBuffer):
    """The recollection buffer of section 4.3: packed discrete latent codes plus class and task.

    ``G`` independent buffers of ``capacity`` codes of ``c`` categorical variables with ``l``
    categories. Codes are packed by ``recollect.codes`` into ``B = packed_bits(c, l)`` bits (eq 1
    when ``l`` is a power of two, within one bit per 62-bit chunk of ``ceil(c log2 l)`` otherwise)
    and live in ``store``, a uint8 tensor ``(G, ceil(capacity * B / 8))``: the real footprint.

    Labels ``y`` and task indices ``task`` are kept beside the codes as int64 (section 4.4). When
    ``n_classes`` and ``n_tasks`` are given, :attr:`label_bits_total` counts them at
    ``ceil(log2 n_classes) + ceil(log2 n_tasks)`` bits per entry; otherwise it is ``None``.
    """

    kind = "recollection"

    def __init__(self, capacity, c, l, groups=1, device="cpu", n_classes=None, n_tasks=None):
        super().__init__(capacity, groups, device)
        self.c = _pos_int(c, "c (number of categorical latent variables)", "e.g. c=38")
        self.l = int(l) if isinstance(l, numbers.Integral) and not isinstance(l, bool) else l
        if not isinstance(self.l, int) or self.l < 2:
            raise ValueError(f"l (categories per latent variable) must be an integer >= 2, got {l!r}")
        self.plan = tuple(packing_plan(self.c, self.l))
        self.width = packed_bits(self.c, self.l)
        self.n_classes = None if n_classes is None else _pos_int(n_classes, "n_classes", "e.g. 100 for CIFAR-100")
        self.n_tasks = None if n_tasks is None else _pos_int(n_tasks, "n_tasks", "e.g. 20 for CIFAR-100")
        self.store = torch.zeros(self.groups, record_bytes(self.capacity, self.width), dtype=torch.uint8,
                                 device=self.device)

    @property
    def bits_per_code(self) -> int:
        """``B = packed_bits(c, l)``: the bits one stored code really takes."""
        return self.width

    bits_per_item = bits_per_code

    @property
    def code_bits_total(self) -> int:
        """``capacity * B``: bits of all codes of one group (the store adds < 8 bits of padding)."""
        return self.capacity * self.width

    @property
    def label_bits_total(self) -> int | None:
        """Bits of the labels and tasks of one full group, ``capacity * (ceil(log2 n_classes) +
        ceil(log2 n_tasks))``, or ``None`` when ``n_classes``/``n_tasks`` were not given (the
        labels are then just kept beside the codes, uncounted)."""
        if self.n_classes is None or self.n_tasks is None:
            return None
        return self.capacity * ((self.n_classes - 1).bit_length() + (self.n_tasks - 1).bit_length())

    def describe(self) -> str:
        """One line on the storage of one group."""
        lab = self.label_bits_total
        lab = (f"{lab} bits of labels and tasks" if lab is not None
               else "labels and tasks kept beside the codes (uncounted: pass n_classes and n_tasks)")
        return (f"{self.capacity} codes of c={self.c}, l={self.l}: {self.width} bits each, "
                f"{self.code_bits_total} bits of codes ({self.store.shape[1]} bytes); {lab}")

    def _check_items(self, codes):
        check_codes(codes, self.l, self.c)
        if codes.dim() != 3 or codes.shape[0] != self.groups:
            raise ValueError(f"codes must have shape (G, n, c) = ({self.groups}, n, {self.c}), got {tuple(codes.shape)}")
        return codes.to(self.device, torch.int64), codes.shape[1]

    def _write_rows(self, g, r, codes, one_per_group):
        _write_flat(self.store, g, r, _pack(codes, self.l, self.plan), self.width, distinct_bytes=one_per_group)

    def _write_span(self, start, codes):
        G, n, _ = codes.shape
        write_span(self.store, start * self.width, _pack(codes, self.l, self.plan).reshape(G, n * self.width))

    def _read_rows(self, rows):
        return _unpack(read_rows(self.store, rows, self.width), self.l, self.plan, check=False)

    def _write_where(self, slot, codes, mask):
        write_row_where(self.store, slot, _pack(codes, self.l, self.plan), mask)

    def codes(self) -> torch.Tensor:
        """All filled codes, int64 ``(G, len(self), c)`` (contiguous read of the store)."""
        n = len(self)
        bits = read_span(self.store, 0, n * self.width).reshape(self.groups, n, self.width)
        return _unpack(bits, self.l, self.plan, check=False)

    def _meta(self):
        d = super()._meta()
        d.update(c=self.c, l=self.l, bits_per_code=self.width)
        return d

    def _payload_state(self):
        return {"store": self.store.clone()}

    def _payload_load(self, d):
        s = d.get("store")
        if not isinstance(s, torch.Tensor) or s.dtype != torch.uint8 or s.shape != self.store.shape:
            raise ValueError(f"state's 'store' must be a uint8 tensor {tuple(self.store.shape)}")
        self.store.copy_(s.to(self.device))


class RehearsalBuffer(ReservoirBuffer):
    """The lossless buffer of the rehearsal baselines (section 5.2, Tables 3 and 4).

    ``G`` independent buffers of ``capacity`` raw uint8 images of ``image_shape`` (C, H, W), stored
    as ``images`` ``(G, capacity, C, H, W)``, at ``bits_per_item = 8 * C * H * W`` bits each.
    Same interface as :class:`RecollectionBuffer` with images in place of codes.
    """

    kind = "rehearsal"

    def __init__(self, capacity, image_shape, groups=1, device="cpu"):
        super().__init__(capacity, groups, device)
        try:
            shape = tuple(int(_pos_int(d, "image dimension", "e.g. (3, 32, 32)")) for d in image_shape)
        except TypeError:
            raise ValueError(f"image_shape must be a tuple such as (3, 32, 32), got {image_shape!r}") from None
        if not shape:
            raise ValueError("image_shape is empty; pass e.g. (1, 28, 28) or (3, 32, 32)")
        self.image_shape = shape
        self.images = torch.zeros(self.groups, self.capacity, *shape, dtype=torch.uint8, device=self.device)

    @property
    def bits_per_item(self) -> int:
        """``8 * prod(image_shape)`` (section 3: 6,272 bits for 28x28, 24,576 for 3x32x32)."""
        return 8 * math.prod(self.image_shape)

    def _check_items(self, images):
        want = (self.groups, "n", *self.image_shape)
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a torch.uint8 tensor {want} (0..255), got {got}")
        if images.dim() != 2 + len(self.image_shape) or images.shape[0] != self.groups \
                or tuple(images.shape[2:]) != self.image_shape:
            raise ValueError(f"images must have shape {want}, got {tuple(images.shape)}")
        return images.to(self.device), images.shape[1]

    def _write_rows(self, g, r, images, one_per_group):
        self.images[g, r] = images

    def _write_span(self, start, images):
        self.images[:, start:start + images.shape[1]] = images

    def _read_rows(self, rows):
        return self.images[self._g.unsqueeze(1), rows]

    def _write_where(self, slot, images, mask):
        g = self._g
        keep = mask.view(-1, *([1] * len(self.image_shape)))
        self.images[g, slot] = torch.where(keep, images, self.images[g, slot])

    def _meta(self):
        d = super()._meta()
        d.update(image_shape=self.image_shape)
        return d

    def _payload_state(self):
        return {"images": self.images.clone()}

    def _payload_load(self, d):
        s = d.get("images")
        if not isinstance(s, torch.Tensor) or s.dtype != torch.uint8 or s.shape != self.images.shape:
            raise ValueError(f"state's 'images' must be a uint8 tensor {tuple(self.images.shape)}")
        self.images.copy_(s.to(self.device))
