"""The lifelong harness of section 5.2: a stream of tasks learned in order, in a single pass, one
incoming example (or batch) at a time, by G fused models (``recollect.grouped``), with the methods
the paper compares.

Public API (all a chapter needs)::

    cfg = LifelongConfig(method="recollection", budget=10, code=(62, 2), steps=1, replay=10, lr=1e-3)
    plan = plan_storage(cfg, stream.image_shape, stream.n_tasks, n_train_classes(stream),
                        task_images=max_task_images)          # accounting (section 3)
    [res] = run_lifelong(stream, [cfg], seeds=[0, 1, 2], device="cuda",
                         resume=state_or_None, on_task_end=lambda t, h: save(h.state_dict()))
    res.R, res.b            # (S, T, T) task-aware accuracy matrix, (S, T) random-init accuracies
    res.R_ci, res.b_ci      # the same, class-incremental (argmax over all n_classes outputs)
    res.summary()           # tidy DataFrame: per seed ACC / BWT / FWT for both accuracies

``stream`` is a ``recollect.data.TaskStream`` (image shape, number of tasks, classes per task and
the train/test split come from it: ``omniglot_tasks()``, ``cifar100_tasks("coarse")``, or any
``.subset(...)``). Everything else is in :class:`LifelongConfig`.

**Methods** are classes registered by name (``recollect.train.methods``; :data:`METHODS`): online
and rehearsal (``recollect.train.rehearsal``), the recollection generator with its whole cycle
(``recollect.train.recollection``), GEM (``recollect.train.gem``) and iCaRL
(``recollect.train.icarl``). Each owns its storage plan and its state; this module keeps the
stream, the fusion of groups, evaluation and checkpoints.

**Fusion.** ``run_lifelong(stream, cfgs, seeds)`` trains every config of ``cfgs`` for every seed
as ONE fused reasoning model of ``G = len(cfgs) * len(seeds)`` groups (block i = config i, one group
per seed). Fusable methods (online, rehearsal, recollection) fuse when they share the reasoning
model, optimizer, schedule and precision (:func:`can_fuse`); each block keeps its own buffer, its
own fused autoencoder (recollection) and its own random generator (seeded by its config and the
seeds, so a block computes the same thing fused or alone). GEM and iCaRL run alone.

**The protocol, per incoming batch** of ``batch`` examples of one task (sections 4.3-4.4, 5.2; the
paper: one example, ``batch=1``; GEM's protocol: 10): ``steps`` gradient steps (the paper's "1 or 3
gradient descent steps per new example"), each on the incoming examples together with ``replay``
items drawn from the block's memory (rehearsal images, recollections decoded by the frozen decoder,
iCaRL exemplars; GEM projects the gradient instead), then the incoming examples are offered to the
memory (reservoir sampling for rehearsal and recollections, GEM's per-task ring buffer; iCaRL herds
its exemplars when the task ends). The methods' modules say exactly what each does. A batch that
ends a task may be shorter (batches never cross a task boundary).

**The step.** All the work of one incoming batch (every gradient step and the store) is one
function of the batch's stream positions, a ``recollect.train.capture.CapturedStep``: on CUDA
(``cuda_graph=True``) it is captured in a CUDA graph after a few eager warm-up calls and replayed
(a new graph when a method's ``step_key`` changes: for GEM and iCaRL at every task, their shapes
depend on the tasks seen), the stream lives on the device, and the step makes no host
synchronisation (reservoir decisions, buffer fill counts, optimizer step counts are device tensors;
empty replay places are filled by ``torch.where``; every random draw comes from a block's device
generator, registered with the graph). On the CPU the same function runs eagerly. With
``amp_dtype="bfloat16"`` the step runs under autocast (off by default; compare with float32 before
using it for results). Every incoming batch ticks ``recollect.train.probe.tick`` once (one example
per tick in the paper's protocol): ``"lifelong"`` in the first task, ``"lifelong-2nd"`` in the
second, ``"lifelong-later"`` in the others (a GEM or iCaRL step grows with the earlier tasks: the plan
extrapolates from a probe of three tasks, ``recollect.experiments.items.Loop``); every evaluation
batch ``tick("eval")``, every iCaRL herding ``tick("herding")``.

After every task (and once before the first, which gives GEM's random-initialisation vector ``b``)
every task's test set is evaluated: task-aware accuracy (GEM's masking: argmax over the task's
classes) and class-incremental accuracy (argmax over all ``n_classes`` outputs; iCaRL: nearest
mean of exemplars).

**Storage** (:func:`plan_storage`): a budget of ``N`` full examples is ``N * image_bits`` bits
(8 bits per value, section 3). Rehearsal keeps ``N`` images; the recollection generator keeps
``recollections_that_fit(N * image_bits, packed_bits(c, l))`` codes (``budget_kind="total"``
also charges the autoencoder's parameters at 32 bits, Table 4's total constraint); GEM keeps
``N // T`` images per task; iCaRL ``N`` exemplars in all, and holds the current task's examples
until it ends (``transient_items``: ``peak_bits`` is what it really holds while a task runs).
Labels and task ids (kept beside every stored item by every method) are not charged, as in the
paper. A method that cannot run at a budget (GEM with fewer memories than tasks, iCaRL with fewer
than classes) returns a result with ``runnable=False`` and the reason.

**Resuming**: :meth:`LifelongHarness.state_dict` holds everything (models, optimizers, buffers,
generator states, position in the stream, accuracy matrices so far), copied to the host when it is
asked for (nothing is copied otherwise); ``run_lifelong(resume=...)`` continues from it, exactly as
an unbroken run would, so a long run can be completed over several commands.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field

import pandas as pd
import torch
from tqdm import tqdm

from .. import accounting, grouped
from ..grouped import grouped_cross_entropy
from ..metrics import summarize
from ..models import make_classifier
from .capture import CapturedStep, autocast, backward_step
from .common import host_copy, masked_logits
from .methods import Learner, LifelongMethod, Setting, StoragePlan, as_input, get_method, init_groups, method_names
from .probe import tick

__all__ = ["METHODS", "LifelongConfig", "StoragePlan", "LifelongResult", "LifelongHarness", "plan_storage",
           "n_train_classes", "n_updates", "updates_per_task", "LOOPS", "run_lifelong", "make_optimizer", "can_fuse", "fuse_groups", "AMP_DTYPES",
           "AS_PUBLISHED"]

#: the names the incoming batches tick (``recollect.train.probe``): in the first task, the second, the others
LOOPS = ("lifelong", "lifelong-2nd", "lifelong-later")

#: the registered methods (``recollect.train.methods``), in registration order
METHODS = method_names()
#: reduced precisions the step may run in (``LifelongConfig.amp_dtype``)
AMP_DTYPES = {"bfloat16": torch.bfloat16}

#: GEM and iCaRL as their authors ran them on incremental CIFAR-100 (issue 15): the config fields of
#: GEM's code (Lopez-Paz & Ranzato 2017, github.com/facebookresearch/GradientEpisodicMemory):
#: ``run_experiments.sh`` (CIFAR_100i: ``--batch_size 10 --samples_per_task 2500``, one epoch;
#: GEM ``--lr 0.1 --n_memories 256 --memory_strength 0.5``; iCaRL ``--lr 1.0 --n_memories 1280
#: --memory_strength 1``), ``model/gem.py`` (``optim.SGD(params, lr)``: no momentum, no weight decay;
#: the memory strength is the QP's lower bound; a ring buffer of each task's latest examples) and
#: ``model/icarl.py`` (SGD; one exemplar of every class of every old task per update, KL
#: distillation on each old task's outputs; herding and class means on the network's outputs).
#: The memory (``budget``) is the row's: 200 in all for the paper's Table 4 (GEM: 10 per task of 20).
AS_PUBLISHED = {
    "gem": dict(optimizer="sgd", lr=0.1, gem_margin=0.5, batch=10),
    "icarl": dict(optimizer="sgd", lr=1.0, icarl_reg=1.0, batch=10, icarl_distill="per_class",
                  icarl_features="logits"),
}

#: fields added after the first results, with their defaults: ``to_dict`` leaves them out while they
#: hold the default, so configs (and cache keys, and the blocks' seeds) of earlier runs are unchanged
_LATER_FIELDS = {"batch": 1, "amp_dtype": None, "icarl_distill": "uniform", "icarl_features": "penultimate"}


@dataclass
class LifelongConfig:
    """Everything that defines one lifelong run, apart from the stream and the seeds.

    method: one of :data:`METHODS` (``online`` | ``rehearsal`` | ``recollection`` | ``gem`` | ``icarl``).
    budget: storage budget N in full examples (0 for online).
    steps: gradient steps per incoming batch (the paper: 1 or 3 per example).
    replay: buffer items drawn per step (recollections, rehearsal images, iCaRL exemplars with
        ``icarl_distill="uniform"``).
    batch: incoming examples per update (the paper: 1; GEM's protocol: 10). Batches never cross a
        task boundary; a task's last batch may be shorter.
    lr, optimizer: the reasoning model's learning rate (float, or a list with one per group) and
        optimizer (``adam`` or ``sgd``: ``recollect.grouped``'s GroupedAdam / plain GroupedSGD).
    model, model_kwargs: ``make_classifier`` name and extra arguments (e.g. ``{"nf": 20}``).
    code: (c, l) of the recollection generator's categorical code.
    ae_lr: the autoencoder's learning rate (with the same optimizer).
    ae_replay: ``autoencode`` or ``code`` (what the autoencoder is trained on; ``recollect.train.recollection``).
    budget_kind: ``incremental`` (codes only, section 3.1) or ``total`` (codes + autoencoder
        parameters at 32 bits, section 3.2 / Table 4).
    encode_sample: store a Gumbel sample of the code instead of its mode.
    gem_margin: GEM's ``memory_strength`` (lower bound of the dual variables; GEM used 0.5).
    qp_iters: iterations of GEM's QP solver (fixed: the step does not synchronise to test convergence).
    icarl_reg: weight of iCaRL's distillation loss (GEM's runs used 1).
    icarl_distill: ``uniform`` (``replay`` exemplars from the whole store) or ``per_class`` (GEM's
        code: one exemplar of every old class per update).
    icarl_features: ``penultimate`` (iCaRL's paper) or ``logits`` (GEM's code) for herding and
        class means.
    train_mask: ``task`` (the loss sees only the example's task's classes, GEM's masking) or
        ``none`` (softmax over all classes).
    eval_batch: test batch size.
    amp_dtype: None (float32) or ``"bfloat16"``: the step under autocast (compare before using it).
    """
    method: str = "online"
    budget: int = 0
    steps: int = 1
    replay: int = 10
    lr: float | list = 1e-3
    optimizer: str = "adam"
    model: str = "resnet18"
    model_kwargs: dict = field(default_factory=dict)
    code: tuple | None = None
    ae_lr: float | list = 1e-3
    ae_replay: str = "autoencode"
    budget_kind: str = "incremental"
    encode_sample: bool = False
    gem_margin: float = 0.5
    qp_iters: int = 100
    icarl_reg: float = 1.0
    train_mask: str = "task"
    eval_batch: int = 1000
    batch: int = 1
    amp_dtype: str | None = None
    icarl_distill: str = "uniform"
    icarl_features: str = "penultimate"

    def __post_init__(self):
        cls = get_method(self.method)
        for name in ("budget", "steps", "replay", "qp_iters", "eval_batch", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("steps", "eval_batch", "batch", "qp_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.code is not None:
            if len(self.code) != 2:
                raise ValueError(f"code must be (c, l), e.g. (62, 2); got {self.code!r}")
            self.code = (int(self.code[0]), int(self.code[1]))
        for name, allowed in (("optimizer", ("adam", "sgd")), ("ae_replay", ("autoencode", "code")),
                              ("budget_kind", ("incremental", "total")), ("train_mask", ("task", "none")),
                              ("icarl_distill", ("uniform", "per_class")),
                              ("icarl_features", ("penultimate", "logits")),
                              ("amp_dtype", (None, *AMP_DTYPES))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        cls.check_config(self)

    def to_dict(self) -> dict:
        """JSON-like (for cache keys). Fields added later are left out while at their defaults."""
        d = dataclasses.asdict(self)
        d["code"] = None if self.code is None else list(self.code)
        for k, default in _LATER_FIELDS.items():
            if d[k] == default:
                del d[k]
        return d


# ------------------------------------------------------------------------------------------------
# storage accounting
# ------------------------------------------------------------------------------------------------
def n_train_classes(stream) -> int:
    """Number of distinct classes in the stream's training data (what iCaRL must cover)."""
    return len(_stream_classes(stream))


def n_updates(task_sizes, batch: int = 1) -> int:
    """Updates of one pass over a stream whose tasks have ``task_sizes`` training examples (a list, or a
    ``TaskStream``), ``batch`` incoming examples per update, batches never crossing a task: the
    number of ticks of the :data:`LOOPS` of a run (``sum(ceil(n / batch))``; the examples when batch
    is 1)."""
    return sum(updates_per_task(task_sizes, batch))


def updates_per_task(task_sizes, batch: int = 1) -> list[int]:
    """The updates of each task of :func:`n_updates` (``ceil(n / batch)`` each)."""
    sizes = [len(s) for s in task_sizes.train] if hasattr(task_sizes, "train") else [int(n) for n in task_sizes]
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    return [-(-n // batch) for n in sizes]


def _stream_classes(stream) -> list[int]:
    out = []
    for s in stream.train:
        out.extend(torch.unique(s.y).tolist())
    return out


def plan_storage(cfg: LifelongConfig, image_shape, n_tasks: int, n_classes_seen: int | None = None, *,
                 task_images: int | None = None) -> StoragePlan:
    """The storage of ``cfg`` on a stream of ``n_tasks`` tasks of images ``image_shape`` (section 3).

    ``n_classes_seen`` (the classes in the training stream) decides whether iCaRL can run;
    ``task_images`` (the largest task's training examples) is what iCaRL holds while a task runs
    (``transient_items``; without it only the incoming batch is counted).
    """
    img = accounting.image_bits(tuple(image_shape))
    return get_method(cfg.method).plan(cfg, img, tuple(image_shape), int(n_tasks), n_classes_seen, task_images)


# ------------------------------------------------------------------------------------------------
# result
# ------------------------------------------------------------------------------------------------
@dataclass
class LifelongResult:
    """Accuracies of one config over its seeds. ``acc`` / ``acc_ci`` are ``(S, T + 1, T)``: row 0
    before any training (random init), row i + 1 after task i; NaN where not run. ``seconds`` is the
    wall time of the fused run this config was part of (``fused_with``: the configs it shared)."""
    config: dict
    seeds: list
    storage: dict
    acc: torch.Tensor | None = None
    acc_ci: torch.Tensor | None = None
    seconds: float = 0.0
    steps: int = 0
    complete: bool = False
    fused_with: int = 1

    @property
    def runnable(self) -> bool:
        return bool(self.storage["runnable"])

    def curves(self, **labels) -> pd.DataFrame:
        """Long form of the accuracy matrices: one row per (seed, after, task) with ``task_aware``
        and ``class_incremental`` accuracy (%); ``after`` 0 is before the first task. ``labels``
        are constant columns put first (the chapter's row description)."""
        S, T1, T = self.acc.shape
        seed, after, task = torch.meshgrid(torch.tensor(list(self.seeds)), torch.arange(T1), torch.arange(T),
                                           indexing="ij")
        df = pd.DataFrame({"seed": seed.flatten().tolist(), "after": after.flatten().tolist(),
                           "task": task.flatten().tolist(),
                           "task_aware": self.acc.double().flatten().tolist(),
                           "class_incremental": self.acc_ci.double().flatten().tolist()})
        for i, (k, v) in enumerate(labels.items()):
            df.insert(i, k, v)
        return df

    @property
    def R(self):
        return None if self.acc is None else self.acc[:, 1:]

    @property
    def b(self):
        return None if self.acc is None else self.acc[:, 0]

    @property
    def R_ci(self):
        return None if self.acc_ci is None else self.acc_ci[:, 1:]

    @property
    def b_ci(self):
        return None if self.acc_ci is None else self.acc_ci[:, 0]

    def summary(self, divide_by: str = "T-1") -> pd.DataFrame:
        """One row per seed: ACC (retention), BWT, FWT, LA, task-aware and class-incremental."""
        if not self.runnable or self.acc is None:
            nan = float("nan")
            return pd.DataFrame([dict({"seed": s}, **{f"{k}_{m}": nan for m in ("task", "class")
                                                      for k in ("ACC", "BWT", "FWT", "LA")}) for s in self.seeds])
        ta = summarize(self.R, self.b, divide_by)
        ci = summarize(self.R_ci, self.b_ci, divide_by)
        rows = []
        for g, s in enumerate(self.seeds):
            r = {"seed": s}
            r.update({f"{k}_task": float(v[g]) for k, v in ta.items()})
            r.update({f"{k}_class": float(v[g]) for k, v in ci.items()})
            rows.append(r)
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LifelongResult":
        return cls(**d)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def make_optimizer(params, name: str, lr):
    """Adam or SGD for fused parameters (both act elementwise, so on fused parameters they are exactly
    G separate optimizers): ``recollect.grouped.make_optimizer``, the one multi-tensor, capturable
    optimizer path with a learning rate per group (a float or a list / tensor with one per group)."""
    return grouped.make_optimizer(params, name, lr)


def _block_seed(seeds, cfg: LifelongConfig) -> int:
    """The seed of a block's generator: a hash of its config and seeds (not of the other blocks)."""
    blob = repr(("lifelong", tuple(int(s) for s in seeds), sorted(cfg.to_dict().items()))).encode()
    return int(hashlib.sha256(blob).hexdigest()[:15], 16)


_FUSE_KEYS = ("model", "model_kwargs", "optimizer", "steps", "replay", "train_mask", "eval_batch", "batch", "amp_dtype")


def can_fuse(a: LifelongConfig, b: LifelongConfig) -> bool:
    """Whether two configs can share one fused reasoning model (fusable methods, same architecture,
    schedule and precision, scalar learning rates)."""
    if not (get_method(a.method).fusable and get_method(b.method).fusable):
        return False
    return all(getattr(a, k) == getattr(b, k) for k in _FUSE_KEYS) and \
        isinstance(a.lr, (int, float)) and isinstance(b.lr, (int, float))


def fuse_groups(cfgs: list) -> list[list[int]]:
    """Partition config indices into fusable runs (greedy, in order): ``[[0, 2], [1], ...]``."""
    runs: list[list[int]] = []
    for i, c in enumerate(cfgs):
        for r in runs:
            if can_fuse(cfgs[r[0]], c):
                r.append(i)
                break
        else:
            runs.append([i])
    return runs


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_UNSET = object()


# ------------------------------------------------------------------------------------------------
# the harness
# ------------------------------------------------------------------------------------------------
class LifelongHarness:
    """One fused run of the configs ``cfgs`` on ``stream`` for ``seeds`` (module docstring).

    ``cfgs`` is one :class:`LifelongConfig` or a list of fusable ones (:func:`can_fuse`); group
    ``i * S + s`` of the reasoning model is config i with seed ``seeds[s]`` (``S = len(seeds)``;
    configs that cannot run at their budget get no groups). ``blocks`` holds one method instance
    per runnable config (``recollect.train.methods``). ``ae_init``: a state dict of a
    ``CategoricalVAE`` with the config's ``code`` (one group, copied to every seed, or one group per
    seed), or a list with one such dict (or None) per config, to start the recollection generator
    from a pretrained autoencoder (section 5.2, Table 4: an autoencoder learned on CIFAR-10).
    ``cuda_graph``: replay each incoming batch's step from a CUDA graph on CUDA (module docstring).
    The models take the default dtype when built (float32; float64 for the exactness tests).
    """

    def __init__(self, stream, cfgs, seeds, device="cpu", ae_init=None, *, cuda_graph: bool = True):
        cfgs = [cfgs] if isinstance(cfgs, LifelongConfig) else list(cfgs)
        if not cfgs:
            raise ValueError("give at least one LifelongConfig")
        for c in cfgs[1:]:
            if not can_fuse(cfgs[0], c):
                raise ValueError(f"configs {cfgs[0].method!r} and {c.method!r} cannot share one fused model: they need "
                                 f"the same {', '.join(_FUSE_KEYS)}, a scalar lr, and GEM / iCaRL run alone "
                                 f"(split them with fuse_groups)")
        self.cfgs = cfgs
        self.cfg = cfg = cfgs[0]  # the shared schedule
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("seeds must hold at least one seed")
        self.S = S = len(self.seeds)
        self.device = dev = torch.device(device)
        self.cuda_graph = bool(cuda_graph)
        self.T = T = stream.n_tasks
        self.image_shape = tuple(stream.image_shape)
        self.n_classes = stream.n_classes
        classes = _stream_classes(stream)
        sizes = [len(s) for s in stream.train]
        self.plans = [plan_storage(c, self.image_shape, T, len(classes), task_images=max(sizes)) for c in cfgs]
        live = [i for i, p in enumerate(self.plans) if p.runnable]
        self.block_of = {i: j for j, i in enumerate(live)}
        self.G = G = S * len(live)
        self.acc = torch.full((G, T + 1, T), float("nan"))
        self.acc_ci = torch.full((G, T + 1, T), float("nan"))
        self.next_task, self.seconds, self.n_steps, self.evaluated_init = 0, 0.0, 0, False
        self.blocks: list[LifelongMethod] = []
        self._step, self._step_key, self._task = None, _UNSET, None
        if not live:
            return
        self.masks = torch.stack([stream.class_mask(t) for t in range(T)]).to(dev)
        self.train_mask = self.masks if cfg.train_mask == "task" else None
        # the stream, on the device: one step reads its incoming batch by position
        self.X = torch.cat([s.x for s in stream.train]).to(dev)
        self.Y = torch.cat([s.y for s in stream.train]).to(dev)
        self.TK = torch.cat([torch.full((n,), t, dtype=torch.long) for t, n in enumerate(sizes)]).to(dev)
        self.offsets = [0]
        for n in sizes:
            self.offsets.append(self.offsets[-1] + n)
        self.positions = torch.arange(self.offsets[-1], device=dev)
        self.train = [(self.X[a:b], self.Y[a:b]) for a, b in zip(self.offsets[:-1], self.offsets[1:])]
        self.test_x = torch.cat([s.x for s in stream.test]).to(dev)
        self.test_y = torch.cat([s.y for s in stream.test]).to(dev)
        self.test_t = torch.cat([torch.full((len(s),), t, dtype=torch.long) for t, s in enumerate(stream.test)]).to(dev)
        self.test_count = torch.bincount(self.test_t, minlength=T).to(dev, torch.float64)
        build = lambda: make_classifier(cfg.model, self.n_classes, self.image_shape, groups=1,  # noqa: E731
                                        **cfg.model_kwargs)
        self.model = init_groups(build, self.seeds * len(live)).to(dev)
        self.model.train()
        self.dtype = next(self.model.parameters()).dtype
        lrs = [float(cfgs[i].lr) for i in live]
        lr = [v for v in lrs for _ in range(S)] if len(set(lrs)) > 1 else cfg.lr
        self.opt = make_optimizer(self.model.parameters(), cfg.optimizer, lr)
        self.amp = AMP_DTYPES.get(cfg.amp_dtype)
        self.setting = Setting(dev, self.seeds, self.image_shape, self.n_classes, T, classes,
                               [torch.unique(s.y).tolist() for s in stream.train], sizes, self.masks,
                               self.train_mask, cfg.eval_batch)
        self.learner = Learner(self.model, self.opt, self.dtype, cfg.steps)
        inits = ae_init if isinstance(ae_init, (list, tuple)) else [ae_init] * len(cfgs)
        for j, i in enumerate(live):
            gen = torch.Generator(device=dev).manual_seed(_block_seed(self.seeds, cfgs[i]))
            method = get_method(cfgs[i].method)
            self.blocks.append(method(cfgs[i], self.plans[i], self.setting, self.learner, j * S, gen, inits[i]))
        self.fused = self.blocks[0].fusable
        self._own_opts = [o for b in self.blocks for o in b.optimizers()]

    @property
    def runnable(self) -> bool:
        return bool(self.blocks)

    # ------------------------------------------------------------------ one incoming batch
    def _learn(self, x: torch.Tensor, y: torch.Tensor, task: torch.Tensor) -> None:
        """Every gradient step of one incoming batch (``x`` ``(B, C, H, W)`` uint8, ``y``, ``task``
        ``(B,)``) and its store, for every block: no host synchronisation, no Python state changed."""
        if not self.fused:
            self.blocks[0].observe(x, y, task)
            return
        S, B = self.S, y.shape[0]
        xs = x.unsqueeze(0).expand(S, *x.shape)
        xf = as_input(xs, self.dtype)
        ys, ts = y.unsqueeze(0).expand(S, B), task.unsqueeze(0).expand(S, B)
        for b in self.blocks:
            b.prepare(xs, xf, ys, ts)
        for _ in range(self.cfg.steps):
            parts = [b.replay_batch(xf, ys, ts) for b in self.blocks]
            if len(parts) == 1:
                xb, yb, tb = parts[0].x, parts[0].y, parts[0].task
            else:
                xb, yb, tb = (torch.cat([getattr(p, k) for p in parts], 0) for k in ("x", "y", "task"))
            logits = self.model(xb)
            if self.train_mask is not None:
                logits = masked_logits(logits, tb, self.train_mask)
            loss = grouped_cross_entropy(logits, yb).sum()
            for b, p in zip(self.blocks, parts):
                own = b.own_loss(p, xf)
                if own is not None:
                    loss = loss + own.sum()
            backward_step(loss, self.opt, *self._own_opts)
        for b in self.blocks:
            b.store(xs, xf, ys, ts)

    def _step_fn(self, idx: torch.Tensor) -> None:
        self._learn(self.X[idx], self.Y[idx], self.TK[idx])

    def begin_task(self, t: int) -> CapturedStep:
        """Start task ``t`` (every block's ``begin_task``) and return the step of its incoming batches: a
        :class:`~recollect.train.capture.CapturedStep` of their stream positions ``(batch,)`` (a slice
        of ``positions``; the task's last, shorter batch goes through ``.eager``). A new step (and on
        CUDA a new graph) when a block's ``step_key`` changed."""
        for b in self.blocks:
            b.begin_task(t)
        self._task = t
        key = tuple(b.step_key() for b in self.blocks)
        if key != self._step_key:
            self._step = CapturedStep(self._step_fn, cuda_graph=self.cuda_graph, amp_dtype=self.amp,
                                      optimizers=[self.opt, *self._own_opts],
                                      generators=[g for b in self.blocks for g in b.generators()],
                                      device=self.device, name="lifelong")
            self._step_key = key
        return self._step

    def observe(self, x: torch.Tensor, y: torch.Tensor, t: int) -> None:
        """Learn one incoming batch of task ``t`` eagerly (x ``(B, C, H, W)`` uint8, y ``(B,)``): the
        same work as a step of :meth:`learn_task`, for tests and notebooks."""
        if self._task != t:
            self.begin_task(t)
        x, y = x.to(self.device), y.to(self.device)
        with autocast(self.device.type, self.amp):
            self._learn(x, y, torch.full((len(y),), t, dtype=torch.long, device=self.device))
        self.n_steps += self.cfg.steps

    def learn_task(self, t: int, bar=None) -> None:
        """Stream task t's training examples, in order, ``batch`` at a time, then end the task."""
        step = self.begin_task(t)
        lo, hi, B = self.offsets[t], self.offsets[t + 1], self.cfg.batch
        name = LOOPS[min(t, 2)]
        for s in range(lo, hi, B):
            tick(name)
            idx = self.positions[s:min(s + B, hi)]
            if idx.shape[0] == B:
                step(idx)
            else:
                step.eager(idx)
            self.n_steps += self.cfg.steps
        x, y = self.train[t]
        for b in self.blocks:
            b.end_task(t, x, y)
        if bar is not None:
            bar.update(hi - lo)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Accuracy (%) on every task's test set, ``(G, T)`` task-aware and ``(G, T)`` class-incremental."""
        G, T = self.G, self.T
        was = self.model.training
        self.model.eval()
        hit_ta = torch.zeros(G, T, device=self.device, dtype=torch.float64)
        hit_ci = torch.zeros(G, T, device=self.device, dtype=torch.float64)
        feats = any(b.needs_features for b in self.blocks)
        for s in range(0, len(self.test_x), self.cfg.eval_batch):
            tick("eval")
            xb = self.test_x[s:s + self.cfg.eval_batch]
            yb, tb = self.test_y[s:s + len(xb)], self.test_t[s:s + len(xb)]
            inp = as_input(xb, self.dtype).unsqueeze(0).expand(G, *xb.shape)
            logits, fe = self.model(inp, return_features=True) if feats else (self.model(inp), None)
            preds = [b.predict(logits[b.lo:b.hi], None if fe is None else fe[b.lo:b.hi], tb, self.masks)
                     for b in self.blocks]
            p_ta = torch.cat([p[0] for p in preds], 0)
            p_ci = torch.cat([p[1] for p in preds], 0)
            hit_ta.index_add_(1, tb, (p_ta == yb).to(hit_ta.dtype))
            hit_ci.index_add_(1, tb, (p_ci == yb).to(hit_ci.dtype))
        self.model.train(was)
        return (hit_ta / self.test_count * 100).float().cpu(), (hit_ci / self.test_count * 100).float().cpu()

    # ------------------------------------------------------------------ the stream
    def run(self, on_task_end=None, progress: bool = False, desc: str | None = None) -> list:
        """Learn the remaining tasks in order, evaluating after each; ``on_task_end(t, harness)`` after
        each task (e.g. to checkpoint ``harness.state_dict()``). Returns one result per config."""
        if not self.runnable:
            return self.results()
        if not self.evaluated_init:
            self.acc[:, 0], self.acc_ci[:, 0] = self.evaluate()
            self.evaluated_init = True
        total = self.offsets[-1]
        with tqdm(total=total, initial=self.offsets[self.next_task], disable=not progress,
                  desc=desc or self.cfg.method, leave=False, unit="ex") as bar:
            for t in range(self.next_task, self.T):
                _sync(self.device)
                start = time.perf_counter()
                self.learn_task(t, bar)
                self.acc[:, t + 1], self.acc_ci[:, t + 1] = self.evaluate()
                _sync(self.device)
                self.seconds += time.perf_counter() - start
                self.next_task = t + 1
                if on_task_end is not None:
                    on_task_end(t, self)
        return self.results()

    def results(self) -> list:
        """One :class:`LifelongResult` per config (in the order given)."""
        out = []
        S = self.S
        for i, (c, p) in enumerate(zip(self.cfgs, self.plans)):
            j = self.block_of.get(i)
            acc = acc_ci = None
            if j is not None:
                acc, acc_ci = self.acc[j * S:(j + 1) * S].clone(), self.acc_ci[j * S:(j + 1) * S].clone()
            out.append(LifelongResult(c.to_dict(), list(self.seeds), dataclasses.asdict(p), acc, acc_ci,
                                      self.seconds, self.n_steps, j is not None and self.next_task == self.T,
                                      len(self.blocks)))
        return out

    # ------------------------------------------------------------------ checkpoints
    def _key(self) -> dict:
        return {"configs": [c.to_dict() for c in self.cfgs], "seeds": list(self.seeds)}

    def state_dict(self) -> dict:
        """Everything needed to continue the run exactly where it is (between tasks), copied to the host."""
        d = dict(self._key(), next_task=self.next_task, acc=self.acc, acc_ci=self.acc_ci,
                 seconds=self.seconds, n_steps=self.n_steps, evaluated_init=self.evaluated_init)
        if self.runnable:
            d.update(model=self.model.state_dict(), opt=self.opt.state_dict(),
                     blocks=[b.state_dict() for b in self.blocks])
        return host_copy(d)

    def load_state_dict(self, d: dict) -> None:
        """Restore :meth:`state_dict` (``ValueError`` if it belongs to other configs or seeds). Every
        tensor is copied into the live state in place (a captured step stays valid)."""
        if {k: d.get(k) for k in self._key()} != self._key():
            raise ValueError("this checkpoint belongs to other configurations or other seeds; resume it with the "
                             "configs and seeds it was saved with, or start without resume")
        self.next_task, self.seconds = int(d["next_task"]), float(d["seconds"])
        self.n_steps, self.evaluated_init = int(d["n_steps"]), bool(d["evaluated_init"])
        self.acc.copy_(d["acc"])
        self.acc_ci.copy_(d["acc_ci"])
        if not self.runnable:
            return
        self.model.load_state_dict(d["model"])
        self.opt.load_state_dict(d["opt"])
        for b, bd in zip(self.blocks, d["blocks"]):
            b.load_state_dict(bd)


def run_lifelong(stream, cfgs, seeds, device="cpu", *, ae_init=None, resume: dict | None = None,
                 on_task_end=None, progress: bool = False, desc: str | None = None,
                 cuda_graph: bool = True) -> list:
    """Run the fusable configs ``cfgs`` (one config or a list) on ``stream`` for ``seeds``, fused as
    groups; resume from a :meth:`LifelongHarness.state_dict` if given.

    Returns one :class:`LifelongResult` per config (``runnable=False`` with the reason when a method
    cannot run at its budget). ``on_task_end(t, harness)`` is called after every task.
    ``cuda_graph``: replay each incoming batch's step from a CUDA graph on CUDA (the same arithmetic
    as eager; False for debugging).
    """
    h = LifelongHarness(stream, cfgs, seeds, device, ae_init, cuda_graph=cuda_graph)
    if resume is not None:
        h.load_state_dict(resume)
    return h.run(on_task_end, progress, desc)
