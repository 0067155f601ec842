"""The items both distillation chapters share (section 5.1): data, the teacher, the recollection
generators with their filled buffers, and the students, parameterised by dataset and architecture.

Every experiment is an :class:`~recollect.experiments.items.Item` whose payload is a deterministic
function of its config and the code (no timings):

* **teacher** (:func:`train_teacher`): a classifier trained on the training images; the payload holds
  its weights (float32, one model), the per-epoch curve (training loss, validation and/or test
  accuracy) and the epoch kept.
* **generator-<name>** (:func:`train_generator`): a categorical autoencoder of appendix A (``c*l/4``
  filters, BCE through the straight-through Gumbel-softmax), then section 5.1's "final pass through
  the data": one stochastic encoding of every training image into a
  :class:`~recollect.buffers.RecollectionBuffer`. The payload holds the weights, the per-epoch loss
  and distortion curve, and the filled buffer (its packed codes, labels and tasks as small ints).
* **students** (:func:`run_students`): sources (the tables' columns and Figure 4's code sampling) x
  samplings x learning rates x runs as the groups of one fused model
  (``recollect.train.distill.train_students``), evaluated at nested checkpoints. They depend on the
  teacher and generator items and rebuild both from those payloads, so a student item can run in a
  later session on another machine.

**Seeds.** Every model and every random stream takes its seed from its role and run index through
:func:`recollect.utils.derive_seed` (``derive_seed("mnist", "student", "lenet", run)``), so no two
roles share a seed and no student starts from the teacher's initial weights (:func:`seed_roles` lists
them; the tests check both). Within one architecture the students of run ``r`` share one seed over
columns, samplings and learning rates: the columns are compared on the same initialisations and the
same uniform draws (a paired design), and the runs differ.

**Long runs.** Trainers save a machine-local checkpoint about every 90 s
(:class:`~recollect.train.checkpoint.Checkpointer`, only when the job has a checkpoint directory) and
continue from it. Before its job's deadline (the queue's budget, or ``$RECOLLECT_TIME_LIMIT`` seconds
under ``python -m recollect run``) a trainer saves and raises
:class:`~recollect.experiments.items.Incomplete` (at an epoch's end where the next epoch might not
finish in time, ``Job.boundary``; the students at their deadline): the same command again continues it.
"""
from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass

import pandas as pd
import torch

from .. import accounting, data, paper
from ..buffers import RecollectionBuffer
from ..grouped import GroupedAdam
from ..models import CategoricalVAE, make_classifier, vae_param_bits
from ..train.autoencoder import distortion as ae_distortion
from ..train.autoencoder import encode_all, train_autoencoder
from ..train.checkpoint import Checkpointer
from ..train.classifier import train_classifier
from ..train.common import evaluate
from ..train.distill import (code_sampling_pool, init_students, labelled_pool, recollection_pool, subset_pool,
                             teacher_pool, train_students)
from ..utils import derive_seed, generator, seed_everything, threads
from .items import Incomplete, Item, Loop, Missing, _with_seeds, collect, get_item, needs_results, register

__all__ = [
    "IMAGE_SHAPE", "IMAGE_BITS", "ACTIVE_K", "SAMPLE_FRACTION", "EQUAL_STORAGE", "GEN_OF",
    "MnistData", "OmniglotData", "Splits", "TeacherConfig", "GeneratorConfig", "StudentConfig",
    "eq4_sizes", "train_teacher", "train_generator", "run_students", "load_classifier", "load_generator",
    "student_groups", "teacher_loops", "generator_loops", "student_loops", "register_teacher",
    "register_generator", "register_students", "seed_roles", "student_seed", "teacher_seed", "generator_seed",
    "teacher_frame", "generator_frame", "student_frame", "pool_frame", "item_config",
]

IMAGE_SHAPE = (1, 28, 28)
IMAGE_BITS = accounting.image_bits(IMAGE_SHAPE)  # 6,272 bits (section 3)
#: active sampling draws k candidates and trains on the hardest (section 5.1: "We set k to 10")
ACTIVE_K = 10
#: the lossless samples, as a fraction of the training set
SAMPLE_FRACTION = paper.SAMPLE_FRACTION
#: each compressed column and the lossless sample of equal total storage (eq 4)
EQUAL_STORAGE = paper.EQUAL_STORAGE
#: column -> generator name
GEN_OF = {"10x Compress": "10x", "50x Compress": "50x", "100x Compress": "100x"}
_GEN_ORDER = ("10x", "50x", "100x")
# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
@dataclass
class Splits:
    """A dataset as the distillation items use it: ``train`` (an ``ImageSet``), the evaluation sets by
    name (``val`` where there is one, ``test``), the task mask (``None`` unless multi-task), the
    number of classes and tasks. Shared and cached: do not modify in place."""
    train: data.ImageSet
    evals: dict
    class_mask: torch.Tensor | None
    n_classes: int
    n_tasks: int | None

    def eval_sets(self, names) -> dict:
        """``{name: (x, y)}`` or, with a task mask, ``{name: (x, y, task)}`` for ``train_students``."""
        out = {}
        for n in names:
            s = self.evals[n]
            out[n] = (s.x, s.y) if self.class_mask is None else (s.x, s.y, s.task)
        return out


@dataclass(frozen=True)
class MnistData:
    """MNIST as section 5.1 uses it: the first ``n_train`` images of the project's training split (the
    first 50,000 official training images; the buffer "grows to a size of 50,000"), the first
    ``n_val`` of the validation split (the last 10,000 official training images; picks learning
    rates and the teacher's epoch) and the first ``n_test`` official test images."""
    n_train: int = 50_000
    n_val: int = 10_000
    n_test: int = 10_000

    dataset = "mnist"

    def sizes(self) -> dict:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}

    def splits(self) -> Splits:
        return _mnist_splits(self.n_train, self.n_val, self.n_test)

    def describe(self) -> str:
        return (f"MNIST: {self.n_train:,} training, {self.n_val:,} validation, {self.n_test:,} test images")


@functools.lru_cache(maxsize=4)
def _mnist_splits(n_train: int, n_val: int, n_test: int) -> Splits:
    def first(name, n):
        s = data.mnist(name)
        if n > len(s):
            raise ValueError(f"MNIST {name} has {len(s):,} images, {n:,} asked for")
        return data.ImageSet(s.x[:n], s.y[:n])
    return Splits(first("train", n_train), {"val": first("val", n_val), "test": first("test", n_test)}, None, 10, None)


#: the paper's Omniglot split (all 50 alphabets, 90% / 10%): sizes for accounting without the data
#: (tests/test_distill_omniglot.py checks them against the data)
OMNIGLOT_SIZES = {"train": 29_214, "test": 3_246}
OMNIGLOT_CLASSES = 1623
OMNIGLOT_TASKS = 50


@dataclass(frozen=True)
class OmniglotData:
    """Omniglot at 28x28, its 50 alphabets as tasks, 90% / 10% of each character's drawings for
    training / testing (``recollect.data.omniglot_multitask``, split seed 0). ``tasks`` keeps the
    first alphabets only (smoke); ``n_train`` / ``n_test`` keep the first images (probes)."""
    train_fraction: float = 0.9
    split_seed: int = 0
    tasks: int | None = None
    n_train: int | None = None
    n_test: int | None = None

    dataset = "omniglot"

    def sizes(self) -> dict:
        if self.tasks is None and self.train_fraction == 0.9 and self.split_seed == 0:
            base = dict(OMNIGLOT_SIZES)
        else:
            sp = _omniglot_splits(self.train_fraction, self.split_seed, self.tasks, None, None)
            base = {"train": len(sp.train), "test": len(sp.evals["test"])}
        for k, lim in (("train", self.n_train), ("test", self.n_test)):
            if lim is not None:
                base[k] = min(base[k], int(lim))
        return base

    def splits(self) -> Splits:
        return _omniglot_splits(float(self.train_fraction), int(self.split_seed), self.tasks, self.n_train, self.n_test)

    def describe(self) -> str:
        s = self.sizes()
        which = "all 50 alphabets" if self.tasks is None else f"the first {self.tasks} alphabets"
        return f"Omniglot 28x28, {which}: {s['train']:,} training, {s['test']:,} test images"


@functools.lru_cache(maxsize=4)
def _omniglot_splits(train_fraction: float, split_seed: int, tasks, n_train, n_test) -> Splits:
    tr, te = data.omniglot_multitask(train_fraction, split_seed)
    mask = torch.zeros(OMNIGLOT_TASKS, OMNIGLOT_CLASSES, dtype=torch.bool)
    mask[tr.task, tr.y] = True  # every character has training drawings: this is the full task mask
    if tasks is not None:
        tr = tr.subset(torch.nonzero(tr.task < tasks).squeeze(1))
        te = te.subset(torch.nonzero(te.task < tasks).squeeze(1))
    if n_train is not None:
        tr = tr.subset(torch.arange(min(int(n_train), len(tr))))
    if n_test is not None:
        te = te.subset(torch.arange(min(int(n_test), len(te))))
    return Splits(tr, {"test": te}, mask, OMNIGLOT_CLASSES, OMNIGLOT_TASKS)


# ------------------------------------------------------------------------------------------------
# eq 4: the generator sizes for a budget
# ------------------------------------------------------------------------------------------------
def eq4_sizes(n_examples: int, ratios=(10, 50, 100), l: int = 2) -> dict:
    """The (c, l) of largest capacity whose buffer of ``n_examples`` codes plus parameters (32 bits
    each, appendix A's architecture) fit ``1 / ratio`` of the lossless training set (eq 4 with
    rho = 1, l fixed to two-way variables as in appendices A.2-A.3): ``{"10x": [c, l], ...}``.
    For MNIST's 50,000 images these are the paper's (168, 2), (62, 2), (38, 2)."""
    return {k: list(v) for k, v in _eq4_sizes(int(n_examples), tuple(int(r) for r in ratios), int(l))}


@functools.lru_cache(maxsize=16)
def _eq4_sizes(n_examples: int, ratios: tuple, l: int) -> tuple:
    out = []
    for r in ratios:
        gamma = n_examples * IMAGE_BITS / r
        # a code cannot take more bits than its share of the budget: c * log2(l) <= 6272 / r
        cands = [(c, l) for c in range(1, IMAGE_BITS // r + 1)]
        c, l_, _ = accounting.search_total(gamma, n_examples, 1.0, vae_param_bits, candidates=cands)
        out.append((f"{r}x", (int(c), int(l_))))
    return tuple(out)


# ------------------------------------------------------------------------------------------------
# configs (each chapter subclasses these with the paper's settings as defaults, and .smoke(), .probe())
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherConfig:
    """The teacher: ``arch`` (``nf`` for the ResNet), Adam with the learning rate of ``schedule``
    (``((until_epoch, lr), ...)``), minibatches of ``batch_size``, ``epochs`` epochs; ``select``
    ``"val"`` keeps the epoch with the best validation accuracy (the last on ties), ``"last"`` the
    last epoch. ``run`` is the run index its seeds derive from."""
    data: object
    arch: str
    nf: int | None
    epochs: int
    batch_size: int
    schedule: tuple
    select: str
    eval_batch: int = 1000
    run: int = 0
    threads: int | None = None

    @property
    def dataset(self) -> str:
        return self.data.dataset


@dataclass(frozen=True)
class GeneratorConfig:
    """One recollection generator: a ``CategoricalVAE(c, l)`` of appendix A trained with BCE (plus
    ``kl_weight`` x KL) through the straight-through Gumbel-softmax at temperature ``tau``, Adam at
    ``lr``, minibatches of ``batch_size``, ``epochs`` epochs; per epoch the distortion of
    ``curve_images`` random training images (the same images and noise every epoch); then one
    stochastic encoding pass of every training image into its buffer."""
    name: str
    c: int
    l: int
    data: object = None
    epochs: int = 0
    batch_size: int = 128
    lr: float = 1e-3
    tau: float = 1.0
    kl_weight: float = 0.0
    curve_images: int = 10_000
    eval_batch: int = 1000
    run: int = 0
    threads: int | None = None

    @property
    def dataset(self) -> str:
        return self.data.dataset


@dataclass(frozen=True)
class StudentConfig:
    """Students of one architecture as the groups of one fused model: every source (``columns``, then
    Figure 4's ``code_sampling`` generators, random sampling only) x every sampling of ``samplings``
    (``(name, k)``: k = 1 random, k > 1 active) x learning rate x run index of ``seeds``; one example
    per update (``batch_size`` 1), evaluated after each number of ``episodes``; ``select_on`` names
    the evaluation set that picks the learning rate (``None``: test only)."""
    data: object
    arch: str
    nf: int | None
    columns: tuple
    samplings: tuple
    lrs: tuple
    seeds: tuple
    episodes: tuple
    code_sampling: tuple = ()
    batch_size: int = 1
    chunk: int = 1000
    select_on: str | None = "val"
    eval_batch: int | None = None
    threads: int | None = None
    #: episodes between the offers of a checkpoint (saved when about 90 s have passed since the last)
    checkpoint_every: int = 10_000

    @property
    def dataset(self) -> str:
        return self.data.dataset

    def generators(self) -> tuple:
        """Names of the generators this config needs (its Compress columns and code sampling)."""
        need = {GEN_OF[c] for c in self.columns if c in GEN_OF} | set(self.code_sampling)
        return tuple(g for g in _GEN_ORDER if g in need)

    def groups(self) -> int:
        n_src = len(self.columns) + len(self.code_sampling)
        per_sampling = [n_src if name == "random" else len(self.columns) for name, _ in self.samplings]
        return sum(per_sampling) * len(self.lrs) * len(self.seeds)


def _model_kwargs(nf) -> dict:
    return {} if nf is None else {"nf": int(nf)}


def _lr_at(schedule, epoch: int) -> float:
    for until, lr in schedule:
        if epoch < until:
            return float(lr)
    return float(schedule[-1][1])


# ------------------------------------------------------------------------------------------------
# seeds: one per role and run (derive_seed)
# ------------------------------------------------------------------------------------------------
def teacher_seed(cfg: TeacherConfig, stream: str = "init") -> int:
    return derive_seed(cfg.dataset, "teacher", cfg.arch, int(cfg.run), stream)


def generator_seed(cfg: GeneratorConfig, stream: str = "init") -> int:
    return derive_seed(cfg.dataset, "generator", cfg.name, int(cfg.run), stream)


def student_seed(dataset: str, arch: str, run: int) -> int:
    """The seed of the students of ``arch`` in run ``run`` (their initialisation and their draws;
    shared by all columns, samplings and learning rates of that run: a paired comparison)."""
    return derive_seed(dataset, "student", arch, int(run))


def sample_seed(dataset: str, column: str, run: int) -> int:
    """Which lossless subset run ``run`` of a Sample column gets."""
    return derive_seed(dataset, "sample", column, int(run))


def code_seed(dataset: str, gen: str, run: int) -> int:
    """The random codes of Figure 4's code sampling for generator ``gen`` in run ``run``."""
    return derive_seed(dataset, "code-sampling", gen, int(run))


_TEACHER_STREAMS = ("init", "global", "shuffle")
_GENERATOR_STREAMS = ("init", "global", "shuffle", "curve", "curve-noise", "distortion", "encode")


def seed_roles(teacher: TeacherConfig, generators, students) -> dict:
    """``{role: seed}`` for every seed a chapter's configs use (teacher and generator streams,
    every student seed, every sample subset and code-sampling stream of every run)."""
    out = {}
    for s in _TEACHER_STREAMS:
        out[f"teacher/{teacher.arch}/run{teacher.run}/{s}"] = teacher_seed(teacher, s)
    for g in generators:
        for s in _GENERATOR_STREAMS:
            out[f"generator/{g.name}/run{g.run}/{s}"] = generator_seed(g, s)
    for st in students:
        for r in st.seeds:
            out[f"student/{st.arch}/run{r}"] = student_seed(st.dataset, st.arch, r)
            for col in st.columns:
                if col in SAMPLE_FRACTION:
                    out[f"sample/{col}/run{r}"] = sample_seed(st.dataset, col, r)
            for g in st.code_sampling:
                out[f"code-sampling/{g}/run{r}"] = code_seed(st.dataset, g, r)
    return out


def init_model(factory, seed: int) -> torch.nn.Module:
    """A single model (G = 1) ``factory(1)`` initialised under ``seed``, exactly as
    ``train_students`` initialises a student of that seed."""
    return init_students(factory, [int(seed)])


# ------------------------------------------------------------------------------------------------
# weights in payloads
# ------------------------------------------------------------------------------------------------
def _weights(model) -> dict:
    """The state dict of a single model as compact CPU tensors (floats as float32)."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        out[k] = (v.float() if v.is_floating_point() else v).contiguous().clone()
    return out


def _classifier_factory(spec: dict):
    return lambda g: make_classifier(spec["arch"], int(spec["n_classes"]), tuple(spec["image_shape"]), groups=g,
                                     **_model_kwargs(spec.get("nf")))


def load_classifier(payload: dict, device="cpu") -> torch.nn.Module:
    """The teacher of a teacher payload, on ``device``, in evaluation mode."""
    model = _classifier_factory(payload["model"])(1)
    model.load_state_dict(payload["weights"])
    return model.to(device).eval()


def load_generator(payload: dict, device="cpu") -> tuple:
    """``(vae on device in evaluation mode, RecollectionBuffer)`` of a generator payload."""
    m = payload["model"]
    vae = CategoricalVAE(int(m["c"]), int(m["l"]), tuple(m["image_shape"]), groups=1, tau=float(m["tau"]))
    vae.load_state_dict(payload["weights"])
    b = payload["buffer"]
    buf = RecollectionBuffer(int(b["capacity"]), int(b["c"]), int(b["l"]), n_classes=m.get("n_classes"),
                             n_tasks=m.get("n_tasks"))
    buf.load_state_dict(b)
    return vae.to(device).eval(), buf


# ------------------------------------------------------------------------------------------------
# the teacher
# ------------------------------------------------------------------------------------------------
def train_teacher(job) -> dict:
    """The teacher (section 5.1): trained on the training images (task-masked cross-entropy when the
    dataset has tasks), evaluated after every epoch on every evaluation set.

    Payload: ``model`` (what rebuilds it), ``weights`` (float32, the epoch kept), ``curve`` (epoch,
    lr, train_loss, ``<set>_acc``), ``epoch`` (kept), ``<set>_acc`` at that epoch, ``train_acc``
    (accuracy on the training images of the kept weights; task-aware with tasks)."""
    cfg, dev = job.cfg, job.device
    sp = cfg.data.splits()
    spec = dict(arch=cfg.arch, nf=cfg.nf, n_classes=sp.n_classes, image_shape=list(IMAGE_SHAPE))
    names = list(sp.evals)
    if cfg.select == "val" and "val" not in names:
        raise ValueError(f"teacher select='val' needs a validation split; {cfg.dataset} has {names}")
    with threads(cfg.threads):
        model = init_model(_classifier_factory(spec), teacher_seed(cfg)).to(dev)
        seed_everything(teacher_seed(cfg, "global"))
        opt = GroupedAdam(model.parameters(), lr=_lr_at(cfg.schedule, 0))
        shuffle = generator(teacher_seed(cfg, "shuffle"))
        gens = {"shuffle": shuffle}
        ck = Checkpointer(job.checkpoint_dir)
        state = dict(epoch=0, curve=[], best=None, best_epoch=0, best_val=-1.0)
        saved = ck.load(gens)
        if saved is not None:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            state = saved["state"]
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg.schedule, state["epoch"])
        mask = None if sp.class_mask is None else sp.class_mask.to(dev)

        def acc(s):
            return float(evaluate(model, s.x, s.y, cfg.eval_batch, s.task if mask is not None else None, mask)[0])

        def snapshot():
            return dict(model=model.state_dict(), opt=opt.state_dict(), state=state)

        def on_epoch_end(epoch, model_, opt_, losses):
            row = dict(epoch=epoch + 1, lr=_lr_at(cfg.schedule, epoch), train_loss=float(losses[-1][0]))
            for n in names:
                row[f"{n}_acc"] = acc(sp.evals[n])
            state["curve"].append(row)
            if cfg.select == "last" or row["val_acc"] >= state["best_val"]:
                state.update(best=_weights(model), best_epoch=epoch + 1,
                             best_val=row.get("val_acc", -1.0))
            for g in opt.param_groups:
                g["lr"] = _lr_at(cfg.schedule, epoch + 1)
            model.train()
            state["epoch"] = epoch + 1
            job.boundary(ck, snapshot, gens, last=epoch + 1 >= cfg.epochs, what="teacher")

        tr = sp.train
        train_classifier(model, tr.x, tr.y, cfg.epochs, cfg.batch_size, _lr_at(cfg.schedule, state["epoch"]), shuffle,
                         task=tr.task if mask is not None else None, class_mask=mask, optimizer=opt,
                         start_epoch=state["epoch"], on_epoch_end=on_epoch_end, progress=job.progress,
                         desc=f"teacher ({cfg.arch})")
        model.load_state_dict(state["best"])
        train_acc = acc(tr)
    ck.done()
    kept = state["curve"][state["best_epoch"] - 1]
    out = dict(model=spec, weights=state["best"], curve=pd.DataFrame(state["curve"]), epoch=int(state["best_epoch"]),
               train_acc=train_acc, chance=chance_accuracy(sp))
    for n in names:
        out[f"{n}_acc"] = kept[f"{n}_acc"]
    return out


def chance_accuracy(sp: Splits) -> float:
    """Test accuracy (%) of a uniform guess: among all classes, or, with tasks, among the classes of each
    test image's task (kept in the teacher's payload, so a chapter renders it without the data)."""
    te = sp.evals["test"]
    if sp.class_mask is None:
        return 100.0 / sp.n_classes
    return float((100.0 / sp.class_mask[te.task].sum(1).float()).mean())


def teacher_loops(cfg: TeacherConfig) -> list:
    s = cfg.data.sizes()
    per_eval = sum(math.ceil(s[n] / cfg.eval_batch) for n in s if n != "train")
    return [Loop("epochs", cfg.epochs * math.ceil(s["train"] / cfg.batch_size), captured=True),
            Loop("eval", cfg.epochs * per_eval + math.ceil(s["train"] / cfg.eval_batch))]


# ------------------------------------------------------------------------------------------------
# the generators and their recollection buffers
# ------------------------------------------------------------------------------------------------
def train_generator(job) -> dict:
    """One recollection generator (appendix A's categorical VAE), then its buffer: one stochastic
    encoding pass over the training images, one code per image with its class and task beside it,
    in order (``append_all``; section 5.1's "final pass through the data").

    Payload: ``model`` (c, l, tau, ...), ``weights`` (float32), ``curve`` (epoch, train_loss,
    distortion on ``curve_images`` training images), ``distortion`` (appendix A.1's metric over all
    training images, one stochastic pass), ``params`` (|theta|), ``bits_per_code``, ``buffer`` (the
    filled ``RecollectionBuffer``'s state: packed codes, labels and tasks as int16)."""
    cfg, dev = job.cfg, job.device
    sp = cfg.data.splits()
    tr = sp.train
    spec = dict(c=int(cfg.c), l=int(cfg.l), tau=float(cfg.tau), image_shape=list(IMAGE_SHAPE),
                n_classes=sp.n_classes if sp.n_tasks else None, n_tasks=sp.n_tasks)
    with threads(cfg.threads):
        x = tr.x.to(dev)
        model = init_model(lambda g: CategoricalVAE(cfg.c, cfg.l, IMAGE_SHAPE, groups=g, tau=cfg.tau),
                           generator_seed(cfg)).to(dev)
        seed_everything(generator_seed(cfg, "global"))
        opt = GroupedAdam(model.parameters(), lr=cfg.lr)
        shuffle = generator(generator_seed(cfg, "shuffle"))
        gens = {"shuffle": shuffle}
        ck = Checkpointer(job.checkpoint_dir)
        state = dict(epoch=0, curve=[])
        saved = ck.load(gens)
        if saved is not None:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            state = saved["state"]
        n_curve = min(cfg.curve_images, len(tr))
        sub = x[torch.randperm(len(tr), generator=generator(generator_seed(cfg, "curve")))[:n_curve].to(dev)]

        def snapshot():
            return dict(model=model.state_dict(), opt=opt.state_dict(), state=state)

        def on_epoch_end(epoch, model_, opt_, losses):
            d = ae_distortion(model, sub, cfg.eval_batch, generator(generator_seed(cfg, "curve-noise"), dev))
            model.train()
            state["curve"].append(dict(epoch=epoch + 1, train_loss=float(losses[-1][0]), distortion=float(d[0])))
            state["epoch"] = epoch + 1
            job.boundary(ck, snapshot, gens, last=epoch + 1 >= cfg.epochs, what=f"generator {cfg.name}")

        train_autoencoder(model, x, cfg.epochs, cfg.batch_size, cfg.lr, shuffle, kl_weight=cfg.kl_weight, optimizer=opt,
                          start_epoch=state["epoch"], on_epoch_end=on_epoch_end, progress=job.progress,
                          desc=f"generator {cfg.name} ({cfg.c}, {cfg.l})")
        model.eval()
        dist = float(ae_distortion(model, x, cfg.eval_batch, generator(generator_seed(cfg, "distortion"), dev))[0])
        # the final pass: one stochastic code per training example into the buffer (section 5.1)
        codes = encode_all(model, x, cfg.eval_batch, generator(generator_seed(cfg, "encode"), dev)).cpu()
    buf = RecollectionBuffer(len(tr), cfg.c, cfg.l, n_classes=spec["n_classes"], n_tasks=spec["n_tasks"])
    task = tr.task if tr.task is not None else torch.zeros(len(tr), dtype=torch.int64)
    buf.append_all(codes, tr.y.view(1, -1), task.view(1, -1))
    state_b = buf.state_dict()
    state_b.update(y=state_b["y"].to(torch.int16), task=state_b["task"].to(torch.int16))
    ck.done()
    return dict(model=spec, weights=_weights(model), curve=pd.DataFrame(state["curve"]), distortion=dist,
                params=accounting.param_count(model), bits_per_code=buf.bits_per_code, buffer=state_b)


def generator_loops(cfg: GeneratorConfig) -> list:
    n = cfg.data.sizes()["train"]
    curve = math.ceil(min(cfg.curve_images, n) / cfg.eval_batch)
    return [Loop("epochs", cfg.epochs * math.ceil(n / cfg.batch_size), captured=True),
            Loop("eval", cfg.epochs * curve + 2 * math.ceil(n / cfg.eval_batch))]


# ------------------------------------------------------------------------------------------------
# the students
# ------------------------------------------------------------------------------------------------
def student_groups(cfg: StudentConfig) -> list:
    """Labels of the fused groups, ordered so that active groups and equal learning rates are
    contiguous (one candidate pass and one fused Adam run each): sampling, lr, source, run."""
    out = []
    for sampling, k in cfg.samplings:
        sources = list(cfg.columns)
        if sampling == "random":
            sources += [f"Code sampling {g}" for g in cfg.code_sampling]
        for lr in cfg.lrs:
            for src in sources:
                for run in cfg.seeds:
                    out.append(dict(source=src, sampling=sampling, k=int(k), lr=float(lr), seed=int(run)))
    return out


def _agreement(targets: torch.Tensor, y: torch.Tensor) -> float:
    return float((targets.argmax(1) == y).float().mean() * 100)


def _build_pools(cfg: StudentConfig, sp: Splits, teacher, gens: dict, groups: list) -> tuple:
    """The pool of every group (pools shared between groups are built once) and one row per source:
    images per pool and, for teacher-labelled pools of real or encoded images, the share (%) whose
    teacher arg-max is the true class of the image."""
    tr = sp.train
    mask = sp.class_mask
    task = tr.task if mask is not None else None
    real = labelled_pool(tr.x, tr.y, sp.n_classes, task=task, name="Real Data")
    made, rows = {"Real Data": real}, {}
    n_codes = max(cfg.episodes) * max(k for _, k in cfg.samplings)

    def pool(src, run):
        if src == "Real Data":
            rows.setdefault(src, dict(source=src, images=len(real), teacher_agrees=float("nan")))
            return real
        if src == "Real x / Teacher y":
            if src not in made:
                made[src] = teacher_pool(tr.x, teacher, task, mask, name=src)
                rows[src] = dict(source=src, images=len(tr), teacher_agrees=_agreement(made[src].targets, tr.y))
            return made[src]
        if src in SAMPLE_FRACTION:
            key = (src, run)
            if key not in made:
                n = max(1, round(SAMPLE_FRACTION[src] * len(tr)))
                made[key] = subset_pool(real, n, generator(sample_seed(cfg.dataset, src, run)), name=src)
                rows.setdefault(src, dict(source=src, images=n, teacher_agrees=float("nan")))
            return made[key]
        if src in GEN_OF:
            if src not in made:
                vae, buf = gens[GEN_OF[src]]
                codes = buf.codes()[0]
                t = buf.task[0] if mask is not None else None
                made[src] = recollection_pool(vae, codes, teacher, t, mask, name=src)
                rows[src] = dict(source=src, images=len(codes), teacher_agrees=_agreement(made[src].targets, buf.y[0]))
            return made[src]
        if src.startswith("Code sampling "):
            g = src[len("Code sampling "):]
            key = (src, run)
            if key not in made:
                if mask is not None:
                    raise ValueError("code sampling has no task to mask the teacher with: not for multi-task data")
                vae, _ = gens[g]
                made[key] = code_sampling_pool(vae, teacher, n_codes, generator(code_seed(cfg.dataset, g, run)),
                                               name=src)
                rows.setdefault(src, dict(source=src, images=n_codes, teacher_agrees=float("nan")))
            return made[key]
        raise ValueError(f"unknown source {src!r}")

    pools = [pool(g["source"], g["seed"]) for g in groups]
    return pools, pd.DataFrame(list(rows.values()))


def run_students(job) -> dict:
    """Train the students of ``job.cfg`` as the groups of ONE fused model (one example per update,
    Adam; ``recollect.train.distill.train_students``) and evaluate each at every number of
    ``episodes`` on the evaluation sets (task-aware with tasks). The teacher and the generators are
    rebuilt from the payloads of the items this one depends on.

    Payload: ``accuracy`` (one row per source, sampling, lr, seed (run index), episodes, split with
    the accuracy in percent), ``pools`` (:func:`_build_pools`), ``groups``."""
    cfg, dev = job.cfg, job.device
    sp = cfg.data.splits()
    groups = student_groups(cfg)
    sets = ["test"] if cfg.select_on is None else [cfg.select_on, "test"]
    with threads(cfg.threads):
        teacher = load_classifier(job.dep("teacher"), dev)
        gens = {g: load_generator(job.dep(f"generator-{g}"), dev) for g in cfg.generators()}
        pools, pool_rows = _build_pools(cfg, sp, teacher, gens, groups)
        del teacher, gens
        spec = dict(arch=cfg.arch, nf=cfg.nf, n_classes=sp.n_classes, image_shape=list(IMAGE_SHAPE))
        ck = Checkpointer(job.checkpoint_dir)
        state = ck.load()
        left = job.time_left()
        t0 = time.perf_counter()
        step = cfg.chunk * cfg.batch_size
        every = None
        if ck.enabled or left is not None:
            every = step * max(1, -(-cfg.checkpoint_every // step))  # a multiple of the chunk
            if every >= max(cfg.episodes):
                every = None

        def on_checkpoint(state_fn):
            out_of_time = left is not None and time.perf_counter() - t0 > left
            ck.maybe_save(state_fn, force=out_of_time)

        run = train_students(_classifier_factory(spec), pools, seeds=[student_seed(cfg.dataset, cfg.arch, g["seed"])
                                                                       for g in groups],
                             lrs=[g["lr"] for g in groups], checkpoints=list(cfg.episodes),
                             eval_sets=sp.eval_sets(sets), active_k=[g["k"] for g in groups],
                             batch_size=cfg.batch_size, class_mask=sp.class_mask, device=dev, chunk=cfg.chunk,
                             checkpoint_every=every, state=state, on_checkpoint=on_checkpoint,
                             max_seconds=left, eval_batch_size=cfg.eval_batch, progress=job.progress,
                             desc=f"{len(groups)} {cfg.arch} students")
    if not run.complete:
        raise Incomplete(f"students stopped after {run.episodes_done:,} of {max(cfg.episodes):,} episodes at their "
                         "deadline; the checkpoint is saved: run the item again on this machine to continue")
    ck.done()
    rows = []
    acc = run.accuracy.numpy()
    for i, ep in enumerate(run.checkpoints):
        for s, split in enumerate(run.sets):
            for g, lab in enumerate(groups):
                rows.append(dict(arch=cfg.arch, source=lab["source"], sampling=lab["sampling"], lr=lab["lr"],
                                 seed=lab["seed"], episodes=int(ep), split=split, accuracy=float(acc[i, s, g])))
    return dict(accuracy=pd.DataFrame(rows), pools=pool_rows, groups=len(groups))


def _pool_evals(n: int, chunk: int = 10_000, batch: int = 1000) -> int:
    """Batches through a model (decoding or labelling) of ``n`` images taken ``chunk`` at a time."""
    full, rest = divmod(int(n), chunk)
    return full * math.ceil(chunk / batch) + (math.ceil(rest / batch) if rest else 0)


def student_loops(cfg: StudentConfig) -> list:
    """The students' steps, and the batches through a model besides them ("eval"): every evaluation
    set at every checkpoint, and building the pools (the teacher labels the real images of Real x /
    Teacher y; each buffer is decoded and labelled; each code-sampling stream is drawn, decoded and
    labelled)."""
    s = cfg.data.sizes()
    G = cfg.groups()
    ev_bs = cfg.eval_batch or max(8, 16384 // G)
    sets = ["test"] if cfg.select_on is None else [cfg.select_on, "test"]
    evals = len(cfg.episodes) * sum(math.ceil(s[n] / ev_bs) for n in sets)
    n = s["train"]
    pools = (math.ceil(n / 1000) if "Real x / Teacher y" in cfg.columns else 0) \
        + 2 * math.ceil(n / 1000) * sum(1 for c in cfg.columns if c in GEN_OF) \
        + 2 * _pool_evals(max(cfg.episodes) * max(k for _, k in cfg.samplings)) \
        * len(cfg.code_sampling) * len(cfg.seeds)
    return [Loop("students", max(cfg.episodes) // cfg.batch_size, captured=True), Loop("eval", evals + pools)]


# ------------------------------------------------------------------------------------------------
# registering the items
# ------------------------------------------------------------------------------------------------
def _profiles(paper_cfg):
    return lambda profile, c=paper_cfg: c if profile == "paper" else c.smoke()


def register_teacher(chapter: str, cfg: TeacherConfig, title: str, priority: int = 10, reduction: str = "") -> Item:
    return register(Item(chapter, "teacher", title, config=_profiles(cfg), run=train_teacher, loops=teacher_loops,
                         priority=priority, stage="first", reduction=reduction, data=(cfg.dataset,), resumable=True))


def register_generator(chapter: str, cfg: GeneratorConfig, title: str, priority: int = 20,
                       reduction: str = "") -> Item:
    return register(Item(chapter, f"generator-{cfg.name}", title, config=_profiles(cfg), run=train_generator,
                         loops=generator_loops, priority=priority, stage="first", reduction=reduction,
                         data=(cfg.dataset,), resumable=True))


def register_students(chapter: str, name: str, cfg: StudentConfig, title: str, priority: int = 50,
                      stage: str = "first", reduction: str = "", versioned_by: str | None = None) -> Item:
    depends = ("teacher",) + tuple(f"generator-{g}" for g in cfg.generators())
    return register(Item(chapter, name, title, config=_profiles(cfg), run=run_students, loops=student_loops,
                         depends=depends, priority=priority, stage=stage, reduction=reduction,
                         versioned_by=versioned_by, data=(cfg.dataset,), resumable=True))


# ------------------------------------------------------------------------------------------------
# payloads -> tables (what the chapters show)
# ------------------------------------------------------------------------------------------------
def item_config(key: str, ctx):
    """The config item ``key`` runs with at ``ctx``'s profile (the notebook's seeds applied), as
    ``recollect.experiments.items.fetch`` uses it."""
    return _with_seeds(get_item(key).cfg("smoke" if ctx.smoke else "paper"), ctx.seeds_given)


def teacher_frame(ctx, chapter: str) -> pd.DataFrame | Missing:
    """The teacher's per-epoch curve, with ``chosen`` marking the epoch kept; ``attrs``: ``train_acc``
    and the kept epoch's numbers."""
    got, missing = collect(ctx, [f"{chapter}/teacher"])
    if not got:
        return Missing(missing)
    p = got[f"{chapter}/teacher"]
    df = p["curve"].copy()
    df["chosen"] = df["epoch"] == p["epoch"]
    df.attrs.update(train_acc=p["train_acc"], epoch=p["epoch"])
    return df


def generator_frame(ctx, chapter: str, names) -> pd.DataFrame | Missing:
    """One row per (generator, epoch): training loss and distortion; ``attrs["final"]``: one row per
    generator (c, l, params, epochs, distortion over all training images, buffer codes and bits),
    ``attrs["missing"]``: the generators not made yet."""
    keys = [f"{chapter}/generator-{n}" for n in names]
    got, missing = collect(ctx, keys)
    if not got:
        return Missing(missing)
    rows, final = [], []
    for n, k in zip(names, keys):
        if k not in got:
            continue
        p = got[k]
        c, l = int(p["model"]["c"]), int(p["model"]["l"])
        cur = p["curve"]
        for r in cur.itertuples():
            rows.append(dict(generator=n, c=c, l=l, epoch=int(r.epoch), train_loss=r.train_loss,
                             distortion=r.distortion))
        final.append(dict(generator=n, c=c, l=l, params=int(p["params"]), epochs=len(cur), distortion=p["distortion"],
                          buffer_codes=int(p["buffer"]["capacity"]), bits_per_code=int(p["bits_per_code"]),
                          store_bytes=int(p["buffer"]["store"].shape[1])))
    df = pd.DataFrame(rows)
    df.attrs.update(final=pd.DataFrame(final), missing=missing)
    return df


def student_frame(ctx, keys) -> pd.DataFrame | Missing:
    """The accuracy tables of the student items ``keys`` as one long table (present ones only at the
    paper profile; ``attrs["missing"]`` lists the others, ``attrs["pools"]`` their pool tables)."""
    got, missing = collect(ctx, keys)
    if not got:
        return Missing(missing)
    df = pd.concat([got[k]["accuracy"] for k in keys if k in got], ignore_index=True)
    pools = pd.concat([got[k]["pools"].assign(item=k.split("/", 1)[1]) for k in keys if k in got], ignore_index=True)
    df.attrs.update(missing=missing, pools=pools, groups={k.split("/", 1)[1]: got[k]["groups"] for k in got})
    return df


@needs_results
def pool_frame(students: pd.DataFrame) -> pd.DataFrame:
    """What the students see, one row per source: images in the pool and how the frozen teacher labels
    teacher-labelled pools (share whose arg-max is the true class of the real or encoded image)."""
    p = students.attrs["pools"].drop(columns=["item"]).drop_duplicates("source")
    return p.reset_index(drop=True)


def config_row(experiment: str, what: str, settings: str) -> dict:
    return {"experiment": experiment, "what": what, "settings": settings}


def generators_row(gens) -> dict:
    """The settings table's row of a chapter's recollection generators (``GeneratorConfig`` s that
    share their training settings)."""
    g0 = gens[0]
    return config_row("generators", ", ".join(f"{g.name} ({g.c}, {g.l})" for g in gens),
                      f"{g0.epochs} epochs, batch {g0.batch_size}, Adam {g0.lr:g}, BCE, tau {g0.tau:g}, distortion "
                      f"of {g0.curve_images:,} training images per epoch; a buffer of one code per training image")


def schedule_text(schedule, epochs: int) -> str:
    """``((375, 1e-3), (500, 1e-4))`` -> ``"1e-3 for 375 epochs, then 1e-4"`` (``"1e-4"`` for one rate)."""
    stages, start = [], 0
    for until, lr in schedule:
        until = min(int(until), int(epochs))
        if until > start:
            stages.append((until - start, float(lr)))
        start = max(start, until)
    if len(stages) <= 1:
        return f"{float(schedule[0][1]):g}" if not stages else f"{stages[0][1]:g}"
    parts = [f"{lr:g} for {n} epoch{'s' * (n != 1)}" for n, lr in stages[:-1]]
    return ", then ".join(parts + [f"{stages[-1][1]:g}"])
