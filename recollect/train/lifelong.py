"""The lifelong harness of section 5.2: a stream of tasks learned in order, one example at a time,
in a single pass, by G fused models (``recollect.grouped``), with the methods the paper compares.

Public API (all a chapter needs)::

    cfg = LifelongConfig(method="recollection", budget=10, code=(62, 2), steps=1, replay=10, lr=1e-3)
    plan = plan_storage(cfg, stream.image_shape, stream.n_tasks, n_train_classes(stream))  # accounting
    [res] = run_lifelong(stream, [cfg], seeds=[0, 1, 2], device="cuda",
                         resume=state_or_None, on_task_end=lambda t, h: save(h.state_dict()))
    res.R, res.b            # (S, T, T) task-aware accuracy matrix, (S, T) random-init accuracies
    res.R_ci, res.b_ci      # the same, class-incremental (argmax over all n_classes outputs)
    res.summary()           # tidy DataFrame: per seed ACC / BWT / FWT for both accuracies

``stream`` is a ``recollect.data.TaskStream`` (image shape, number of tasks, classes per task and
the train/test split come from it: ``omniglot_tasks()``, ``cifar100_tasks("coarse")``, or any
``.subset(...)``). Everything else is in :class:`LifelongConfig`.

**Fusion.** ``run_lifelong(stream, cfgs, seeds)`` trains every config of ``cfgs`` for every seed
as ONE fused reasoning model of ``G = len(cfgs) * len(seeds)`` groups (block i = config i, one group
per seed). Online, rehearsal and recollection configs fuse when they share the reasoning model,
optimizer, ``steps``, ``replay`` and ``train_mask`` (:func:`can_fuse`); each block keeps its own
buffer, its own fused autoencoder (recollection) and its own random generator (seeded by its
config and the seeds, so a block computes the same thing fused or alone). GEM and iCaRL run alone.

**The protocol, per incoming example** ``(x, y, t)`` (sections 4.3-4.4, 5.2):

1. *Recollection generator only*: the decoder is frozen (its parameters are copied into a
   second autoencoder) right before the example arrives.
2. ``steps`` gradient steps (the paper's "1 or 3 gradient descent steps per new example"). Each
   step draws a fresh batch of ``replay`` items from the buffer (uniformly, with replacement) and
   trains on the incoming example together with them; the batch always holds ``1 + replay``
   items, and while a buffer is empty (and always for ``online``) the free places hold copies of
   the incoming example, which gives exactly the gradient and the batch-norm normalisation of the
   example alone (only BatchNorm's unbiased running-variance factor ``n / (n - 1)`` sees the
   larger count):

   * ``online``: the example alone;
   * ``rehearsal``: the example plus ``replay`` lossless images of a :class:`RehearsalBuffer`;
   * ``recollection``: the example plus ``replay`` recollections, i.e. codes of a
     :class:`RecollectionBuffer` decoded by the *frozen* decoder (images in [0, 1]) with their
     stored class and task. The same batch trains the reasoning model (task-masked
     cross-entropy) and the autoencoder itself (dual purpose, section 4.3): with
     ``ae_replay="autoencode"`` (default) the autoencoder reconstructs the whole batch (the new
     example and each recollection is input and target, through the straight-through
     Gumbel-softmax; BCE, ``recollect.train.autoencoder.reconstruction_loss``), which ties the
     current autoencoder to what the frozen decoder produced; with ``ae_replay="code"`` the
     decoder is trained to map each *stored code* to the frozen decoder's recollection (and the
     whole autoencoder on the new example);
   * ``gem``: the example alone, its gradient projected by GEM's QP against the gradients on
     the episodic memories of all previous tasks (``recollect.train.gem``);
   * ``icarl``: the example plus a distillation loss on ``replay`` exemplars
     (``recollect.train.icarl``).
3. The example is then offered to the buffer: reservoir sampling (section 5.2) for rehearsal
   and recollections (the code is the autoencoder's encoding right after its update on this
   example, i.e. "when the input was first experienced"; the mode of the categorical posterior
   unless ``encode_sample``); GEM's per-task ring buffer; iCaRL keeps the task's examples until
   the task ends, then herds its exemplars.

After every task (and once before the first, which gives GEM's random-initialisation vector ``b``)
every task's test set is evaluated: task-aware accuracy (GEM's masking: argmax over the task's
classes) and class-incremental accuracy (argmax over all ``n_classes`` outputs).

**Storage** (:func:`plan_storage`): a budget of ``N`` full examples is ``N * image_bits`` bits
(8 bits per value, section 3). Rehearsal keeps ``N`` images; the recollection generator keeps
``recollections_that_fit(N * image_bits, packed_bits(c, l))`` codes (``budget_kind="total"``
also charges the autoencoder's parameters at 32 bits, Table 4's total constraint); GEM keeps
``N // T`` images per task; iCaRL ``N`` exemplars in all. Labels and task ids (kept beside every
stored item by every method) are not charged, as in the paper. A method that cannot run at a
budget (GEM with fewer memories than tasks, iCaRL with fewer than classes) returns a result with
``runnable=False`` and the reason.

**Speed**: seeds (and fusable configs) run as ONE fused reasoning model and one fused
autoencoder per recollection block, with ``groups=S`` buffers; the stream order is shared by all
groups, initialisations (one seed per group) and all random draws (one device generator per
block, drawing (S, ...) tensors) differ per group. Data and buffers live on the device; no
per-step Python loop runs over groups (only over the few fused configs).

**Resuming**: :meth:`LifelongHarness.state_dict` holds everything (models, optimizers, buffers,
generator states, position in the stream, accuracy matrices so far); ``run_lifelong(resume=...)``
continues from it, so a long run can be completed over several commands.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import accounting
from ..buffers import RecollectionBuffer, RehearsalBuffer
from ..codes import packed_bits
from ..grouped import GroupedAdam, GroupedSGD, grouped_cross_entropy, stack_groups
from ..metrics import summarize
from ..models import CategoricalVAE, make_classifier, vae_param_bits
from .autoencoder import reconstruction_loss
from .common import masked_logits, noise_generator
from .gem import GEMMemory, flat_grad, project_gradient, set_flat_grad, task_gradients
from .icarl import ExemplarStore, distillation_loss, icarl_runnable

__all__ = ["METHODS", "LifelongConfig", "StoragePlan", "LifelongResult", "LifelongHarness", "plan_storage",
           "n_train_classes", "run_lifelong", "make_optimizer", "can_fuse", "fuse_groups"]

METHODS = ("online", "rehearsal", "recollection", "gem", "icarl")


@dataclass
class LifelongConfig:
    """Everything that defines one lifelong run, apart from the stream and the seeds.

    method: ``online`` | ``rehearsal`` | ``recollection`` | ``gem`` | ``icarl``.
    budget: storage budget N in full examples (0 for online).
    steps: gradient steps per incoming example (the paper: 1 or 3).
    replay: buffer items drawn per step (recollections, rehearsal images, iCaRL exemplars).
    lr, optimizer: the reasoning model's learning rate (float, or a list with one per group) and
        optimizer (``adam`` or ``sgd``).
    model, model_kwargs: ``make_classifier`` name and extra arguments (e.g. ``{"nf": 20}``).
    code: (c, l) of the recollection generator's categorical code.
    ae_lr: the autoencoder's learning rate (Adam, or ``optimizer``).
    ae_replay: ``autoencode`` or ``code`` (what the autoencoder is trained on; module docstring).
    budget_kind: ``incremental`` (codes only, section 3.1) or ``total`` (codes + autoencoder
        parameters at 32 bits, section 3.2 / Table 4).
    encode_sample: store a Gumbel sample of the code instead of its mode.
    gem_margin: GEM's ``memory_strength`` (lower bound of the dual variables; GEM used 0.5).
    qp_iters: iteration cap of GEM's QP solver.
    icarl_reg: weight of iCaRL's distillation loss (GEM's runs used 1).
    train_mask: ``task`` (the loss sees only the example's task's classes, GEM's masking) or
        ``none`` (softmax over all classes).
    eval_batch: test batch size.
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
    qp_iters: int = 1000
    icarl_reg: float = 1.0
    train_mask: str = "task"
    eval_batch: int = 1000

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        for name in ("budget", "steps", "replay", "qp_iters", "eval_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if self.steps < 1 or self.eval_batch < 1:
            raise ValueError("steps and eval_batch must be >= 1")
        if self.method == "online" and self.budget:
            raise ValueError("online learning stores nothing: use budget=0")
        if self.method != "online" and self.budget < 1:
            raise ValueError(f"method {self.method!r} needs a storage budget >= 1 (in full examples)")
        if self.method == "recollection":
            if self.code is None or len(self.code) != 2:
                raise ValueError("the recollection generator needs code=(c, l), e.g. (62, 2)")
            self.code = (int(self.code[0]), int(self.code[1]))
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.ae_replay not in ("autoencode", "code"):
            raise ValueError(f"ae_replay must be 'autoencode' or 'code', got {self.ae_replay!r}")
        if self.budget_kind not in ("incremental", "total"):
            raise ValueError(f"budget_kind must be 'incremental' or 'total', got {self.budget_kind!r}")
        if self.train_mask not in ("task", "none"):
            raise ValueError(f"train_mask must be 'task' or 'none', got {self.train_mask!r}")

    def to_dict(self) -> dict:
        """JSON-like (for cache keys)."""
        d = dataclasses.asdict(self)
        d["code"] = None if self.code is None else list(self.code)
        return d


# ------------------------------------------------------------------------------------------------
# storage accounting
# ------------------------------------------------------------------------------------------------
@dataclass
class StoragePlan:
    """What a method stores under a budget of ``budget`` full examples (see module docstring)."""
    method: str
    budget: int
    budget_bits: int
    item: str              # "image", "code" or "-"
    bits_per_item: int
    capacity: int          # items stored (all tasks together)
    fixed_bits: int        # autoencoder parameters charged to the budget (budget_kind="total")
    runnable: bool
    reason: str = ""

    @property
    def used_bits(self) -> int:
        return self.capacity * self.bits_per_item + self.fixed_bits

    def describe(self) -> str:
        if not self.runnable:
            return f"{self.method} at a budget of {self.budget}: cannot run ({self.reason})"
        if self.capacity == 0:
            return f"{self.method}: stores nothing"
        extra = f" + {self.fixed_bits:,} bits of autoencoder parameters" if self.fixed_bits else ""
        return (f"{self.method}: {self.capacity:,} {self.item}s x {self.bits_per_item:,} bits{extra} = "
                f"{self.used_bits:,} of {self.budget_bits:,} bits")


def n_train_classes(stream) -> int:
    """Number of distinct classes in the stream's training data (what iCaRL must cover)."""
    return len(_stream_classes(stream))


def _stream_classes(stream) -> list[int]:
    out = []
    for s in stream.train:
        out.extend(torch.unique(s.y).tolist())
    return out


def plan_storage(cfg: LifelongConfig, image_shape, n_tasks: int, n_classes_seen: int | None = None) -> StoragePlan:
    """The storage of ``cfg`` on a stream of ``n_tasks`` tasks of images ``image_shape``.

    ``n_classes_seen`` (the classes in the training stream) decides whether iCaRL can run.
    """
    img = accounting.image_bits(tuple(image_shape))
    N = cfg.budget
    budget_bits = N * img
    m = cfg.method
    if m == "online":
        return StoragePlan(m, 0, 0, "-", 0, 0, 0, True)
    if m == "rehearsal":
        return StoragePlan(m, N, budget_bits, "image", img, N, 0, True)
    if m == "recollection":
        c, l = cfg.code
        bits = packed_bits(c, l)
        fixed = 0
        if cfg.budget_kind == "total":
            fixed = vae_param_bits(c, l, tuple(image_shape))
        try:
            cap = accounting.recollections_that_fit(budget_bits, bits, fixed)
        except ValueError as e:
            return StoragePlan(m, N, budget_bits, "code", bits, 0, fixed, False, str(e))
        return StoragePlan(m, N, budget_bits, "code", bits, cap, fixed, cap >= 1,
                           "" if cap >= 1 else "not one code fits the budget")
    if m == "gem":
        per = N // n_tasks
        if per < 1:
            return StoragePlan(m, N, budget_bits, "image", img, 0, 0, False,
                               f"GEM keeps budget // tasks = {N} // {n_tasks} = 0 memories per task: "
                               f"fewer memories ({N}) than tasks ({n_tasks})")
        return StoragePlan(m, N, budget_bits, "image", img, per * n_tasks, 0, True)
    # icarl
    ok, reason = icarl_runnable(N, n_classes_seen if n_classes_seen is not None else 0)
    return StoragePlan(m, N, budget_bits, "image", img, N if ok else 0, 0, ok, reason)


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
    G separate optimizers). On a GPU with one learning rate for all groups: torch's fused Adam /
    foreach SGD (few kernel launches per step); otherwise ``recollect.grouped``'s GroupedAdam /
    GroupedSGD (a learning rate per group; on the CPU this also avoids the seconds-long import that
    torch's optimizers trigger on first use)."""
    params = list(params)
    per_group = isinstance(lr, (list, tuple)) or (isinstance(lr, torch.Tensor) and lr.dim() > 0)
    if not per_group and params and params[0].is_cuda:
        if name == "adam":
            return torch.optim.Adam(params, lr=float(lr), fused=True)
        return torch.optim.SGD(params, lr=float(lr), foreach=True)
    lr = torch.as_tensor(lr, dtype=torch.float32) if per_group else float(lr)
    return GroupedAdam(params, lr=lr) if name == "adam" else GroupedSGD(params, lr=lr)


def _init_groups(build, seeds):
    """One model per seed (initialised under that seed, without touching the global RNG), fused."""
    models = []
    for s in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(s))
            models.append(build())
    return models[0] if len(models) == 1 else stack_groups(models)


def _block_seed(seeds, cfg: LifelongConfig) -> int:
    """The seed of a block's generator: a hash of its config and seeds (not of the other blocks)."""
    blob = repr(("lifelong", tuple(int(s) for s in seeds), sorted(cfg.to_dict().items()))).encode()
    return int(hashlib.sha256(blob).hexdigest()[:15], 16)


_FUSE_KEYS = ("model", "model_kwargs", "optimizer", "steps", "replay", "train_mask", "eval_batch")


def can_fuse(a: LifelongConfig, b: LifelongConfig) -> bool:
    """Whether two configs can share one fused reasoning model (same architecture and schedule)."""
    if a.method in ("gem", "icarl") or b.method in ("gem", "icarl"):
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


def _fast_get(buf, idx):
    """Items, labels and tasks at slots ``idx`` (G, n) drawn by ``buf.sample_indices``.

    ``buf.get`` validates the indices with a host synchronisation per call; indices drawn by
    ``sample_indices`` are valid by construction, so the stored rows are read directly."""
    return buf._read_rows(idx), buf.y.gather(1, idx), buf.task.gather(1, idx)


# ------------------------------------------------------------------------------------------------
# the harness
# ------------------------------------------------------------------------------------------------
class _Block:
    """One config of a fused run: groups ``lo .. hi - 1`` of the reasoning model (one per seed), its
    buffer, its fused autoencoder and frozen decoder (recollection), and its generator."""

    def __init__(self, cfg: LifelongConfig, plan: StoragePlan, lo: int, seeds, harness, ae_init):
        self.cfg, self.plan, self.lo = cfg, plan, lo
        self.S = S = len(seeds)
        self.hi = lo + S
        dev = harness.device
        self.gen = torch.Generator(device=dev).manual_seed(_block_seed(seeds, cfg))
        self.buffer = self.vae = self.frozen = self.ae_opt = None
        if cfg.method == "rehearsal":
            self.buffer = RehearsalBuffer(plan.capacity, harness.image_shape, groups=S, device=dev)
        elif cfg.method == "recollection":
            c, l = cfg.code
            self.vae = harness._build_vae(c, l, ae_init).to(dev)
            self.vae.train()
            self.frozen = copy.deepcopy(self.vae)
            for p in self.frozen.parameters():
                p.requires_grad_(False)
            self._dec = list(self.vae.dec.parameters())
            self._frozen_dec = list(self.frozen.dec.parameters())
            self.ae_opt = make_optimizer(self.vae.parameters(), cfg.optimizer, cfg.ae_lr)
            self.buffer = RecollectionBuffer(plan.capacity, c, l, groups=S, device=dev,
                                             n_classes=harness.n_classes, n_tasks=harness.T)

    def freeze_decoder(self) -> None:
        """Section 4.3: freeze the decoder right before each incoming experience."""
        if self.vae is not None:
            with torch.no_grad():
                torch._foreach_copy_(self._frozen_dec, self._dec)

    def batch(self, xf, yn, tn):
        """The block's training batch ``(x (S, 1 + k, C, H, W) float, y, task, codes, recollections)``:
        the new example first, then ``k = replay`` buffer items, or copies of the example while there
        is nothing to replay (module docstring)."""
        k = self.cfg.replay
        buf = self.buffer
        if buf is None or k == 0 or len(buf) == 0:
            if k == 0:
                return xf, yn, tn, None, None
            B = 1 + k
            return (xf.expand(self.S, B, *xf.shape[2:]), yn.expand(self.S, B), tn.expand(self.S, B), None, None)
        idx = buf.sample_indices(k, self.gen)
        items, ys, ts = _fast_get(buf, idx)
        codes = None
        if self.cfg.method == "rehearsal":
            xr = items.float() / 255.0
        else:
            codes = items
            with torch.no_grad():
                xr = torch.sigmoid(self.frozen.decode_onehot(F.one_hot(codes, self.cfg.code[1]).float()))
        return torch.cat([xf, xr], 1), torch.cat([yn, ys], 1), torch.cat([tn, ts], 1), codes, xr

    def ae_loss(self, xb, xf, codes, xr) -> torch.Tensor:
        """The autoencoder's loss (S,) on the block's batch (dual purpose, section 4.3)."""
        noise = noise_generator(self.gen, xb.device)
        if self.cfg.ae_replay == "autoencode" or codes is None:
            return reconstruction_loss(self.vae, xb, noise)
        new = reconstruction_loss(self.vae, xf, noise)
        logits = self.vae.decode_onehot(F.one_hot(codes, self.cfg.code[1]).float())
        rl = F.binary_cross_entropy_with_logits(logits, xr, reduction="none").flatten(2).mean(-1)  # (S, k)
        return (new + rl.sum(1)) / (1 + rl.shape[1])

    def store(self, xn, xf, yn, tn) -> None:
        """Offer the incoming example to the buffer (reservoir sampling, section 5.2)."""
        if self.cfg.method == "rehearsal":
            self.buffer.add(xn, yn, tn, self.gen)
        elif self.cfg.method == "recollection":
            codes = self.vae.encode(xf, noise_generator(self.gen, xf.device), sample=self.cfg.encode_sample)
            self.buffer.add(codes, yn, tn, self.gen)

    def state_dict(self) -> dict:
        d = {"gen": self.gen.get_state()}
        if self.buffer is not None:
            d["buffer"] = self.buffer.state_dict()
        if self.vae is not None:
            d.update(vae=self.vae.state_dict(), ae_opt=self.ae_opt.state_dict())
        return d

    def load_state_dict(self, d: dict) -> None:
        self.gen.set_state(d["gen"])
        if self.buffer is not None:
            self.buffer.load_state_dict(d["buffer"])
        if self.vae is not None:
            self.vae.load_state_dict(d["vae"])
            self.ae_opt.load_state_dict(d["ae_opt"])


class LifelongHarness:
    """One fused run of the configs ``cfgs`` on ``stream`` for ``seeds`` (module docstring).

    ``cfgs`` is one :class:`LifelongConfig` or a list of fusable ones (:func:`can_fuse`); group
    ``i * S + s`` of the reasoning model is config i with seed ``seeds[s]`` (``S = len(seeds)``;
    configs that cannot run at their budget get no groups). ``ae_init``: a state dict of a
    ``CategoricalVAE`` with the config's ``code`` (one group, copied to every seed, or one group per
    seed), or a list with one such dict (or None) per config, to start the recollection generator
    from a pretrained autoencoder (section 5.2, Table 4: an autoencoder learned on CIFAR-10).
    """

    def __init__(self, stream, cfgs, seeds, device="cpu", ae_init=None):
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
        S = len(self.seeds)
        self.device = dev = torch.device(device)
        self.T = T = stream.n_tasks
        self.image_shape = tuple(stream.image_shape)
        self.n_classes = stream.n_classes
        classes = _stream_classes(stream)
        self.plans = [plan_storage(c, self.image_shape, T, len(classes)) for c in cfgs]
        self.family = cfg.method if cfg.method in ("gem", "icarl") else "replay"
        live = [i for i, p in enumerate(self.plans) if p.runnable]
        self.block_of = {i: j for j, i in enumerate(live)}
        self.G = G = S * len(live)
        self.acc = torch.full((G, T + 1, T), float("nan"))
        self.acc_ci = torch.full((G, T + 1, T), float("nan"))
        self.next_task, self.seconds, self.n_steps, self.evaluated_init = 0, 0.0, 0, False
        self.blocks: list[_Block] = []
        self.memory = self.store = None
        if not live:
            return
        self.masks = torch.stack([stream.class_mask(t) for t in range(T)]).to(dev)
        self.train_mask = self.masks if cfg.train_mask == "task" else None
        self.train = [(s.x.to(dev), s.y.to(dev)) for s in stream.train]
        self.test_x = torch.cat([s.x for s in stream.test]).to(dev)
        self.test_y = torch.cat([s.y for s in stream.test]).to(dev)
        self.test_t = torch.cat([torch.full((len(s),), t, dtype=torch.long) for t, s in enumerate(stream.test)]).to(dev)
        self.test_count = torch.bincount(self.test_t, minlength=T).float().to(dev)
        build = lambda: make_classifier(cfg.model, self.n_classes, self.image_shape, groups=1,  # noqa: E731
                                        **cfg.model_kwargs)
        self.model = _init_groups(build, self.seeds * len(live)).to(dev)
        self.model.train()
        lrs = [float(cfgs[i].lr) for i in live] if self.family == "replay" else None
        if lrs is not None and len(set(lrs)) > 1:
            lr = [v for v in lrs for _ in range(S)]
        else:
            lr = cfg.lr
        self.opt = make_optimizer(self.model.parameters(), cfg.optimizer, lr)
        inits = ae_init if isinstance(ae_init, (list, tuple)) else [ae_init] * len(cfgs)
        for j, i in enumerate(live):
            self.blocks.append(_Block(cfgs[i], self.plans[i], j * S, self.seeds, self, inits[i]))
        if self.family == "gem":
            self.memory = GEMMemory(T, cfg.budget // T, self.image_shape, device=dev)
            self._params = list(self.model.parameters())
        elif self.family == "icarl":
            first = len(torch.unique(stream.train[0].y))
            self.store = ExemplarStore(cfg.budget, classes, first, self.image_shape, self.n_classes, S, device=dev)
            self._valid_flat = torch.zeros(0, dtype=torch.long, device=dev)

    @property
    def runnable(self) -> bool:
        return bool(self.blocks)

    def _build_vae(self, c, l, ae_init):
        build = lambda: CategoricalVAE(c, l, self.image_shape, groups=1)  # noqa: E731
        S = len(self.seeds)
        if ae_init is None:
            return _init_groups(build, self.seeds)
        lead = next(v for v in ae_init.values() if isinstance(v, torch.Tensor)).shape[0]
        if lead == S:
            vae = CategoricalVAE(c, l, self.image_shape, groups=S)
            vae.load_state_dict(ae_init)
            return vae
        if lead != 1:
            raise ValueError(f"ae_init holds {lead} groups; give one group (copied to all) or one per seed ({S})")
        one = build()
        one.load_state_dict(ae_init)
        return one if S == 1 else stack_groups([one] * S)

    # ------------------------------------------------------------------ one incoming example
    def _step_replay(self, xf, yn, tn):
        parts = [b.batch(xf, yn, tn) for b in self.blocks]
        if len(parts) == 1:
            xb, yb, tb = parts[0][:3]
        else:
            xb, yb, tb = (torch.cat([p[i] for p in parts], 0) for i in range(3))
        logits = self.model(xb)
        if self.train_mask is not None:
            logits = masked_logits(logits, tb, self.train_mask)
        loss = grouped_cross_entropy(logits, yb).sum()
        for b, p in zip(self.blocks, parts):
            if b.vae is not None:
                loss = loss + b.ae_loss(p[0], xf, p[3], p[4]).sum()
                b.ae_opt.zero_grad(set_to_none=True)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        for b in self.blocks:
            if b.ae_opt is not None:
                b.ae_opt.step()

    def _step_gem(self, xf, yn, tn, t):
        logits = self.model(xf)
        if self.train_mask is not None:
            logits = masked_logits(logits, tn, self.train_mask)
        self.opt.zero_grad(set_to_none=True)
        grouped_cross_entropy(logits, yn).sum().backward()
        if t > 0:
            mx, my, mt = self.memory.tasks_before(t)
            M = task_gradients(self.model, mx, my, mt, self.train_mask)
            g, _ = project_gradient(flat_grad(self._params), M, self.cfg.gem_margin, iters=self.cfg.qp_iters)
            set_flat_grad(self._params, g)
        self.opt.step()

    def _step_icarl(self, xf, yn, tn):
        k = self.cfg.replay
        use = k > 0 and len(self._valid_flat) > 0 and self.cfg.icarl_reg > 0
        if use:
            xs, tg, ts = self.store.sample(k, self.blocks[0].gen, self._valid_flat)
            xb = torch.cat([xf, xs.float() / 255.0], 1)
        else:
            xb = xf
        logits = self.model(xb)
        new = logits[:, :1]
        if self.train_mask is not None:
            new = masked_logits(new, tn, self.train_mask)
        loss = grouped_cross_entropy(new, yn)
        if use:
            loss = loss + self.cfg.icarl_reg * distillation_loss(logits[:, 1:], tg, ts, self.train_mask)
        self.opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        self.opt.step()

    def observe(self, x1: torch.Tensor, y1: torch.Tensor, t: int, tn: torch.Tensor | None = None) -> None:
        """Learn one incoming example: x1 ``(1, C, H, W)`` uint8, y1 ``(1,)``, task t (module docstring).
        ``tn`` is t as an ``(S, 1)`` long tensor on the device (made here when not given)."""
        S = len(self.seeds)
        xn = x1.unsqueeze(0).expand(S, *x1.shape)
        xf = xn.float() / 255.0
        yn = y1.unsqueeze(0).expand(S, 1)
        if tn is None:
            tn = torch.full((S, 1), t, dtype=torch.long, device=self.device)
        for b in self.blocks:
            b.freeze_decoder()
        for _ in range(self.cfg.steps):
            if self.family == "gem":
                self._step_gem(xf, yn, tn, t)
            elif self.family == "icarl":
                self._step_icarl(xf, yn, tn)
            else:
                self._step_replay(xf, yn, tn)
            self.n_steps += 1
        for b in self.blocks:
            b.store(xn, xf, yn, tn)
        if self.memory is not None:
            self.memory.add(t, x1[0], y1[0])

    def learn_task(self, t: int, bar=None) -> None:
        """Stream task t's training examples, in order, one at a time."""
        x, y = self.train[t]
        tn = torch.full((len(self.seeds), 1), t, dtype=torch.long, device=self.device)
        for i in range(len(x)):
            self.observe(x[i:i + 1], y[i:i + 1], t, tn)
        if self.store is not None:
            self.store.update(self.model, x, y, t, self.cfg.eval_batch)
            self._valid_flat = self.store.valid.flatten().nonzero().squeeze(1)
        if bar is not None:
            bar.update(len(x))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Accuracy (%) on every task's test set, ``(G, T)`` task-aware and ``(G, T)`` class-incremental."""
        G, T = self.G, self.T
        was = self.model.training
        self.model.eval()
        hit_ta = torch.zeros(G, T, device=self.device)
        hit_ci = torch.zeros(G, T, device=self.device)
        nme = self.store is not None and len(self._valid_flat) > 0
        if nme:
            task_has = (self.masks & self.store.class_has_exemplars()).any(-1)  # (T,)
        for s in range(0, len(self.test_x), self.cfg.eval_batch):
            xb = self.test_x[s:s + self.cfg.eval_batch]
            yb, tb = self.test_y[s:s + len(xb)], self.test_t[s:s + len(xb)]
            inp = xb.unsqueeze(0).expand(G, *xb.shape)
            if nme:
                logits, fe = self.model(inp, return_features=True)
            else:
                logits = self.model(inp)
            p_ci = logits.argmax(-1)
            p_ta = masked_logits(logits, tb, self.masks).argmax(-1)
            if nme:
                sc = self.store.nme_scores(fe)
                p_ci = sc.argmax(-1)
                p_ta = torch.where(task_has[tb].unsqueeze(0), masked_logits(sc, tb, self.masks).argmax(-1), p_ta)
            hit_ta.index_add_(1, tb, (p_ta == yb).float())
            hit_ci.index_add_(1, tb, (p_ci == yb).float())
        self.model.train(was)
        return (hit_ta / self.test_count * 100).cpu(), (hit_ci / self.test_count * 100).cpu()

    # ------------------------------------------------------------------ the stream
    def run(self, on_task_end=None, progress: bool = False, desc: str | None = None) -> list:
        """Learn the remaining tasks in order, evaluating after each; ``on_task_end(t, harness)`` after
        each task (e.g. to checkpoint ``harness.state_dict()``). Returns one result per config."""
        if not self.runnable:
            return self.results()
        if not self.evaluated_init:
            self.acc[:, 0], self.acc_ci[:, 0] = self.evaluate()
            self.evaluated_init = True
        total = sum(len(x) for x, _ in self.train)
        done = sum(len(x) for x, _ in self.train[:self.next_task])
        with tqdm(total=total, initial=done, disable=not progress, desc=desc or self.cfg.method,
                  leave=False, unit="ex") as bar:
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
        S = len(self.seeds)
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
        """Everything needed to continue the run exactly where it is (between tasks)."""
        d = dict(self._key(), next_task=self.next_task, acc=self.acc.clone(), acc_ci=self.acc_ci.clone(),
                 seconds=self.seconds, n_steps=self.n_steps, evaluated_init=self.evaluated_init)
        if not self.runnable:
            return d
        d.update(model=self.model.state_dict(), opt=self.opt.state_dict(),
                 blocks=[b.state_dict() for b in self.blocks])
        if self.memory is not None:
            d["memory"] = self.memory.state_dict()
        if self.store is not None:
            d.update(store=self.store.state_dict(), valid_flat=self._valid_flat.clone())
        return copy.deepcopy(d)  # state dicts hold references to the live tensors

    def load_state_dict(self, d: dict) -> None:
        """Restore :meth:`state_dict` (``ValueError`` if it belongs to other configs or seeds)."""
        if {k: d.get(k) for k in self._key()} != self._key():
            raise ValueError("this checkpoint belongs to other configurations or other seeds")
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
        if self.memory is not None:
            self.memory.load_state_dict(d["memory"])
        if self.store is not None:
            self.store.load_state_dict(d["store"])
            self._valid_flat = d["valid_flat"].to(self.device)


def run_lifelong(stream, cfgs, seeds, device="cpu", *, ae_init=None, resume: dict | None = None,
                 on_task_end=None, progress: bool = False, desc: str | None = None) -> list:
    """Run the fusable configs ``cfgs`` (one config or a list) on ``stream`` for ``seeds``, fused as
    groups; resume from a :meth:`LifelongHarness.state_dict` if given.

    Returns one :class:`LifelongResult` per config (``runnable=False`` with the reason when a method
    cannot run at its budget). ``on_task_end(t, harness)`` is called after every task.
    """
    h = LifelongHarness(stream, cfgs, seeds, device, ae_init)
    if resume is not None:
        h.load_state_dict(resume)
    return h.run(on_task_end, progress, desc)
