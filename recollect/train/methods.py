"""The lifelong methods of section 5.2 as classes, registered by name, and what the harness lends them.

One class per method (``online``, ``rehearsal``, ``recollection``, ``gem``, ``icarl``), each in the
module that owns its state (``recollect.train.rehearsal``, ``recollection``, ``gem``, ``icarl``);
the harness (``recollect.train.lifelong``) keeps the stream, the fusion of groups, evaluation and
checkpoints. Adding a method is one new module whose class is decorated with :func:`register`, plus
its name in :data:`_MODULES` (so the registry can import it).

A method instance is one *block* of a fused run: ``S = len(seeds)`` groups ``lo .. lo + S - 1`` of
the shared reasoning model (one per seed), with its own storage plan, state and random generator.
Its life cycle, per task ``t``::

    begin_task(t)                    # Python state that stays fixed for the whole task
    per incoming batch (x, y, task): # one call of the captured step (below)
        ...                          # all gradient steps of the batch, then the store
    end_task(t, x_task, y_task)      # e.g. iCaRL's herding; may synchronise

**The per-example step** (what a CUDA graph replays; ``recollect.train.capture``) reads only device
tensors and Python values fixed in ``begin_task`` (``step_key()`` names them: the harness captures
a new graph when the key changes), makes no host synchronisation and changes no Python state.

* *Fusable* methods (``fusable = True``: online, rehearsal, recollection) share one forward and
  backward pass of the reasoning model with the other blocks of the run. They implement the hooks
  ``prepare`` (once per incoming batch, before the gradient steps), ``replay_batch`` (the block's
  part of each step's training batch), ``own_loss`` (losses of the block's own models, e.g. the
  autoencoder), ``optimizers`` (stepped with the reasoning model's) and ``store`` (after the
  steps); the harness composes them.
* The others (GEM, iCaRL) run alone and implement ``observe(x, y, task)``: every gradient step of
  the incoming batch and the store, using the :class:`Learner` (the reasoning model and its
  optimizer) that the harness lends them.

Evaluation asks each block for its predictions (``predict``: by default the argmax of the
task-masked logits and of all logits; iCaRL classifies by the nearest mean of exemplars).
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

import torch

from ..grouped import stack_groups
from .common import masked_logits

__all__ = ["StoragePlan", "Setting", "Learner", "ReplayBatch", "LifelongMethod", "register", "get_method",
           "method_names", "as_input", "init_groups"]

#: the modules that define the registered methods, in the order of :data:`recollect.train.lifelong.METHODS`
_MODULES = ("recollect.train.rehearsal", "recollect.train.recollection", "recollect.train.gem",
            "recollect.train.icarl")
_REGISTRY: dict[str, type] = {}
_loaded = False


def register(cls):
    """Class decorator: make a :class:`LifelongMethod` subclass available by its ``name``."""
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        raise ValueError(f"{cls.__name__} needs a class attribute name = '...' to be registered")
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for m in _MODULES:
            importlib.import_module(m)


def method_names() -> tuple:
    """The registered method names: in the order of :data:`_MODULES`, then of registration within a module."""
    _load()
    rank = {m: i for i, m in enumerate(_MODULES)}
    seq = {n: i for i, n in enumerate(_REGISTRY)}
    return tuple(sorted(_REGISTRY, key=lambda n: (rank.get(_REGISTRY[n].__module__, len(rank)), seq[n])))


def get_method(name: str) -> type:
    """The class of method ``name`` (``ValueError`` naming the choices if there is none)."""
    _load()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; choose one of {method_names()}") from None


def as_input(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 images 0..255 -> floats 0..1 of ``dtype`` (the reasoning model's); floats pass through."""
    return x.to(dtype) / 255.0 if x.dtype == torch.uint8 else x.to(dtype)


def init_groups(build, seeds):
    """One model per seed (initialised under that seed, without touching the global RNG), fused."""
    models = []
    for s in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(s))
            models.append(build())
    return models[0] if len(models) == 1 else stack_groups(models)


# ------------------------------------------------------------------------------------------------
# what a method stores
# ------------------------------------------------------------------------------------------------
@dataclass
class StoragePlan:
    """What a method stores under a budget of ``budget`` full examples (section 3: a full example is
    ``image_bits``; labels and task ids are kept beside every item and not charged, as in the paper).

    ``capacity`` items of ``bits_per_item`` bits (+ ``fixed_bits`` of autoencoder parameters under
    the total constraint of section 3.2) are what stays stored between tasks: ``used_bits``.
    ``transient_items`` / ``transient_bits`` are the examples a method holds *beyond* that while a
    task runs: iCaRL keeps every example of the current task until the task ends (its herding
    needs them), the largest task's examples here; a method updating on batches of ``b`` incoming
    examples holds the other ``b - 1`` of a batch. ``peak_bits`` is the sum, what a reader should
    compare with the budget for iCaRL."""
    method: str
    budget: int
    budget_bits: int
    item: str              # "image", "code" or "-"
    bits_per_item: int
    capacity: int          # items stored (all tasks together)
    fixed_bits: int        # autoencoder parameters charged to the budget (budget_kind="total")
    runnable: bool
    reason: str = ""
    transient_items: int = 0
    transient_bits: int = 0

    @property
    def used_bits(self) -> int:
        return self.capacity * self.bits_per_item + self.fixed_bits

    @property
    def peak_bits(self) -> int:
        return self.used_bits + self.transient_bits

    def describe(self) -> str:
        if not self.runnable:
            return f"{self.method} at a budget of {self.budget}: cannot run ({self.reason})"
        if self.capacity == 0:
            return f"{self.method}: stores nothing"
        extra = f" + {self.fixed_bits:,} bits of autoencoder parameters" if self.fixed_bits else ""
        out = (f"{self.method}: {self.capacity:,} {self.item}s x {self.bits_per_item:,} bits{extra} = "
               f"{self.used_bits:,} of {self.budget_bits:,} bits")
        if self.transient_items:
            out += (f"; while a task runs it also holds {self.transient_items:,} incoming images "
                    f"({self.transient_bits:,} bits; peak {self.peak_bits:,} bits)")
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------
# what the harness lends a method
# ------------------------------------------------------------------------------------------------
@dataclass
class Setting:
    """Facts of the run a method may read (fixed for the whole run)."""
    device: torch.device
    seeds: list
    image_shape: tuple
    n_classes: int
    n_tasks: int
    classes: list          # the training stream's classes, in order of first appearance
    task_classes: list     # per task, its classes (int lists)
    task_sizes: list       # per task, its number of training examples
    masks: torch.Tensor    # (T, n_classes) bool: the classes of each task
    train_mask: torch.Tensor | None  # masks, or None when training sees all classes
    eval_batch: int

    @property
    def S(self) -> int:
        return len(self.seeds)


@dataclass
class Learner:
    """The reasoning model of the run (shared by all its blocks), its optimizer, its input dtype and
    the schedule: ``steps`` gradient steps per incoming batch (section 5.2: 1 or 3)."""
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    dtype: torch.dtype
    steps: int


@dataclass
class ReplayBatch:
    """A fusable block's part of one training step: ``x`` ``(S, n, C, H, W)`` float in [0, 1], labels
    and tasks ``(S, n)``; ``extra`` holds what the block's ``own_loss`` needs (e.g. codes)."""
    x: torch.Tensor
    y: torch.Tensor
    task: torch.Tensor
    extra: dict = dataclasses.field(default_factory=dict)


class LifelongMethod:
    """Base class of a method (module docstring). Subclasses set ``name`` and, if they share the
    reasoning model with other blocks, ``fusable = True``."""

    name: str = ""
    fusable: bool = False
    #: whether ``predict`` needs the penultimate features (the harness asks the model for them)
    needs_features: bool = False

    # ---------------------------------------------------------------- configuration and storage
    @classmethod
    def check_config(cls, cfg) -> None:
        """``ValueError`` when ``cfg`` (a ``LifelongConfig``) does not suit the method."""
        if cfg.budget < 1:
            raise ValueError(f"method {cls.name!r} needs a storage budget >= 1 (in full examples)")

    @classmethod
    def plan(cls, cfg, image_bits: int, image_shape, n_tasks: int, n_classes: int | None,
             task_images: int | None) -> StoragePlan:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---------------------------------------------------------------- construction
    def __init__(self, cfg, plan: StoragePlan, setting: Setting, learner: Learner, lo: int,
                 generator: torch.Generator, init=None):
        """``init``: a pretrained state for the method's own models (the recollection generator's
        autoencoder, Table 4's transfer); methods without such models ignore it."""
        self.cfg, self.storage, self.setting, self.learner = cfg, plan, setting, learner
        self.lo, self.hi = lo, lo + setting.S
        self.gen = generator

    def generators(self) -> list:
        """The explicit generators the step draws from (registered with a captured graph)."""
        return [self.gen]

    def optimizers(self) -> list:
        """Optimizers of the block's own models, stepped in the same step as the reasoning model's."""
        return []

    # ---------------------------------------------------------------- tasks
    def begin_task(self, t: int) -> None:
        self.t = int(t)

    def step_key(self):
        """Python values the step depends on (fixed for a task); the harness captures a new graph when
        it changes. None: one graph for the whole stream."""
        return None

    def end_task(self, t: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """After task ``t`` (its training examples ``x``, ``y``); may synchronise."""

    # ---------------------------------------------------------------- the step
    def observe(self, x: torch.Tensor, y: torch.Tensor, task: torch.Tensor) -> None:  # pragma: no cover
        """All gradient steps of an incoming batch (``x`` ``(B, C, H, W)`` uint8, ``y`` and ``task``
        ``(B,)``) and the store: for methods that run alone."""
        raise NotImplementedError(f"{self.name} is fusable: the harness composes its hooks")

    def prepare(self, x: torch.Tensor, xf: torch.Tensor, y: torch.Tensor, task: torch.Tensor) -> None:
        """Fusable hook, once per incoming batch before the gradient steps (``x`` ``(S, B, ...)``
        uint8, ``xf`` the same in [0, 1], ``y`` / ``task`` ``(S, B)``)."""

    def replay_batch(self, xf, y, task) -> ReplayBatch:  # pragma: no cover - abstract
        raise NotImplementedError

    def own_loss(self, batch: ReplayBatch, xf: torch.Tensor):
        """Fusable hook: the block's own per-group losses ``(S,)`` in this step, or None."""
        return None

    def store(self, x, xf, y, task) -> None:
        """Fusable hook, after the gradient steps: offer the incoming batch to the block's memory."""

    # ---------------------------------------------------------------- evaluation
    def predict(self, logits: torch.Tensor, feats, task: torch.Tensor, masks: torch.Tensor):
        """Predictions ``(task-aware (S, N), class-incremental (S, N))`` from the block's logits
        ``(S, N, K)`` (and penultimate features when ``needs_features``): GEM's task masking, and the
        argmax over all outputs."""
        return masked_logits(logits, task, masks).argmax(-1), logits.argmax(-1)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, d: dict) -> None:
        self.gen.set_state(d["gen"])
