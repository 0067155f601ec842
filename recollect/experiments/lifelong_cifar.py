"""Chapter "lifelong learning on incremental CIFAR-100": paper section 5.2, Tables 3 and 4, appendices
A.4 and A.5.

Twenty tasks of five CIFAR-100 classes, learned in order, in a single pass, by GEM's reduced ResNet-18
(nf = 20, 100 outputs, task masks), in the lifelong harness ``recollect.train.lifelong`` (reservoir
sampling into every buffer; every task evaluated after every task). Two task splits
(``recollect.data.cifar100_tasks``): ``coarse`` (task t = the five fine classes of superclass t, the
paper's text) and ``gem`` (task t = fine labels 5t .. 5t+4, GEM's split, which the paper cites and on
which GEM's paper made the GEM and iCaRL numbers that Table 4 quotes).

* **Table 3** (incremental storage, section 3.1), one example at a time: online (no buffer); rehearsal
  with 10, 50 and 200 lossless images; the recollection generator with the bits of 10, 50 and 200
  images, codes of (48, 2), (244, 2) and (620, 3) (``paper.TABLE3_GENERATORS``), autoencoder learning
  rate 1e-3, 1e-3, 1e-4 (appendix A.4). The number of codes comes from the real packed size of a code
  (``recollect.codes.packed_bits``), not from the paper's rounded 5,000 (:func:`code_accounting`).
* **Table 4** (total storage, section 3.2): 200 images' bits for codes *and* the autoencoder's
  parameters (32 bits each): a (76, 2) autoencoder from scratch (autoencoder lr 1e-3) and one
  initialised from an autoencoder trained on CIFAR-10 (the ``cifar10-ae`` item, lr 3e-4, appendix
  A.5); rehearsal with 200 images (Table 3's run); GEM and iCaRL with 200 memories **as their authors
  ran them** (``recollect.train.lifelong.AS_PUBLISHED``, from GEM's code: plain SGD, GEM at lr 0.1 with
  margin 0.5, iCaRL at lr 1 with GEM's distillation on one exemplar per old class and class means of
  the logits, both updating on batches of 10 incoming examples), beside the values the paper quotes
  from GEM's paper. The rows ``gem-200-adam`` and ``icarl-200-adam`` run them with this harness's
  optimizer instead (Adam at 1e-3, one example per step, iCaRL's paper's features): beyond the paper,
  labelled as not the published methods.

Items (``recollect.experiments.items``; at the paper profile each a result in
``results/lifelong-cifar100/``), one per fused run (``fuse_groups``: the online, rehearsal and
recollection rows of both tables share one network and schedule; GEM and iCaRL run alone):

* stage ``first`` (every row of Tables 3 and 4 once, and the GEM and iCaRL rows where the paper's
  values were made): ``cifar10-ae`` (the CIFAR-10 autoencoder, one per paper seed, its weights the
  payload), ``coarse-fused-s0`` (Table 3's 7 rows and Table 4's 2 recollection rows, seed 0, needs
  ``cifar10-ae``), ``gemsplit-gem-s0`` and ``gemsplit-icarl-s0`` (the rows with a verdict against
  48.7 and 43.6), ``coarse-gem-s0``, ``coarse-icarl-s0``;
* stage ``seeds``: the same runs at seeds 1 and 2 (``*-s1-2``);
* stage ``beyond``: the online, rehearsal and recollection rows on GEM's split (``gemsplit-fused-*``)
  and the harness-optimizer variants of GEM and iCaRL on both splits (``*-gem-adam-*``,
  ``*-icarl-adam-*``).

Tables read the payloads (:func:`run_rows`, :func:`accuracy_curves`, :func:`pretrain`); the storage
accounting (:func:`storage_table`, :func:`code_accounting`, :func:`total_accounting`) needs no
training. The figures are in ``recollect.figures`` (``lifelong_cifar_*``), the claims in
``recollect.claims.lifelong_cifar``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from .. import accounting, data, paper
from ..codes import packed_bits
from ..grouped import GroupedAdam, stack_groups
from ..models import CategoricalVAE
from ..train.autoencoder import distortion as ae_distortion
from ..train.autoencoder import train_autoencoder
from ..train.checkpoint import Checkpointer
from ..train.lifelong import LifelongConfig, plan_storage
from ..utils import generator, seed_everything, threads
from . import lifelong_common as L
from .items import Item, Loop, Missing, get_item, needs_results, register, result

__all__ = ["BAND", "NAME", "CHAPTER", "SPLITS", "IMAGE_SHAPE", "IMAGE_BITS", "PAPER_BUDGETS", "PAPER_TOTAL",
           "PAPER_SEEDS", "PROBE_ONLINE", "FACTS", "ROWS", "CifarRun", "PretrainConfig", "PAPER", "PAPER_PRETRAIN",
           "BASELINE_ROWS", "PROBE_BATCHED_EXAMPLES", "RUN_WITH", "stream", "rows", "row_configs", "settings",
           "items_table", "item_keys", "describe_streams",
           "storage_table", "code_accounting", "total_accounting", "pretrain", "pretrain_table", "pretrain_line",
           "run_rows", "accuracy_curves", "runs_line", "compare_rows", "no_verdicts", "online_table",
           "transfer_table"]

NAME = CHAPTER = "lifelong-cifar100"
#: Tolerance band of the verdicts, in retention points (absolute): agrees within 3, close within 6.
BAND = 3.0
SPLITS = ("coarse", "gem")
#: item name prefix of each split
SPLIT_PREFIX = {"coarse": "coarse", "gem": "gemsplit"}
IMAGE_SHAPE = (3, 32, 32)
IMAGE_BITS = accounting.image_bits(IMAGE_SHAPE)  # 24,576 (section 3)
#: the paper's incremental budgets (Table 3) and total budget (Table 4), in full examples
PAPER_BUDGETS = (10, 50, 200)
PAPER_TOTAL = 200
#: seeds of the paper profile: the first pass runs the first, the seeds stage the others
PAPER_SEEDS = (0, 1, 2)
#: the smoke profile fuses two seeds in every run (the fusion of seeds is then exercised)
SMOKE_SEEDS = (0, 1)
#: the probe's incoming examples per task (``lifelong_common``: both chapters probe alike)
PROBE_EXAMPLES, PROBE_BATCHED_EXAMPLES = L.PROBE_EXAMPLES, L.PROBE_BATCHED_EXAMPLES
#: test images per class in the probe (dry run, preflight)
PROBE_TEST_PER_CLASS = 4
#: the paper profile's stream (either split), for accounting without the dataset; the tests check
#: these against the data
FACTS = {"tasks": 20, "classes": 100, "train_images": 50_000, "test_images": 10_000, "max_train_per_task": 2500,
         "train_sizes": (2500,) * 20}
#: the CIFAR-10 images the project's data file holds (its first 4,000 training and 1,000 test images)
CIFAR10_IMAGES = 5000
#: Not paper numbers: the online baseline measured by the early probes (../shared/probe-notes.md,
#: "Online baseline on incremental CIFAR-100"): GEM's ResNet-18, one pass, minibatches of 10, plain
#: SGD at lr 0.1 and 1.0, task-masked logits. (split, lr) -> final average accuracy (%).
PROBE_ONLINE = {("coarse", 0.1): 25.8, ("coarse", 1.0): 33.9, ("gem", 0.1): 41.0, ("gem", 1.0): 55.1}
#: the rows, in the order of the tables
ROWS = ("online", "rehearsal-10", "rehearsal-50", "rehearsal-200", "recollection-10", "recollection-50",
        "recollection-200", "total-scratch", "total-transfer", "gem-200", "icarl-200", "gem-200-adam",
        "icarl-200-adam")
FUSED_ROWS = ROWS[:9]
#: GEM and iCaRL: as published (``AS_PUBLISHED``) or with this harness's optimizer (``-adam``)
BASELINE_ROWS = {"gem-200": "published", "icarl-200": "published", "gem-200-adam": "harness",
                 "icarl-200-adam": "harness"}
#: the rows the smoke profile runs on the second split (the GEM split): the largest buffers and GEM and
#: iCaRL as published (their verdicts are made on this split)
SMOKE_SECOND_SPLIT_ROWS = ("online", "rehearsal-200", "recollection-200", "gem-200", "icarl-200")


# ------------------------------------------------------------------------------------------------
# configuration: the paper profile in one place; smoke and probe derived from it
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CifarRun(L.HarnessRun):
    """One fused run of the lifelong harness on incremental CIFAR-100: the rows ``rows`` (keys of
    :data:`ROWS`) of split ``split`` at the seeds ``run_seeds``.

    Paper profile (section 5.2, appendices A.4 and A.5): all 20 tasks (2,500 training and 500 test
    images each), GEM's ResNet-18 (nf = 20), one gradient step per incoming example on the example
    and 10 replayed buffer items, Adam at 1e-3 for the reasoning model of the online, rehearsal and
    recollection rows (A.4 and A.5 give the rate; the optimizer is ours), incremental budgets of
    10 / 50 / 200 images with the codes of Table 3 and autoencoder learning rates 1e-3 / 1e-3 / 1e-4
    (A.4), a total budget of 200 images with a (76, 2) code at 1e-3 from scratch and 3e-4 from
    CIFAR-10 (A.5). GEM and iCaRL with 200 memories as their authors ran them (``gem_*``, ``icarl_*``:
    ``recollect.train.lifelong.AS_PUBLISHED``, GEM's code for CIFAR-100); their ``-adam`` rows with
    this profile's ``optimizer`` and ``lr``, one example per step, iCaRL's own sampling and features
    (``LifelongConfig``'s defaults)."""
    split: str = "coarse"
    rows: tuple = ()
    run_seeds: tuple = (0,)
    steps: int = 1
    budgets: tuple = PAPER_BUDGETS
    codes: tuple = tuple(tuple(paper.TABLE3_GENERATORS[b]) for b in PAPER_BUDGETS)
    ae_lrs: tuple = (1e-3, 1e-3, 1e-4)        # A.4: 1e-4 for the buffer of 200, 1e-3 for the others
    total_budget: int = PAPER_TOTAL
    total_code: tuple = tuple(paper.TABLE4_GENERATOR)
    ae_lr_scratch: float = 1e-3              # A.5: without transfer
    ae_lr_transfer: float = 3e-4             # A.5: the autoencoder initialised from CIFAR-10

    def smoke(self) -> "CifarRun":
        """Today's smoke sizes: the first 3 tasks, their first 20 training examples, 5 test images per
        class, nf = 2, 3 buffer items per step, budgets 2 / 5 / 20 (2 and 5 below the 15 classes, like
        the paper's 10 and 50 below its 100) with codes (8, 2), (12, 2), (8, 3), a total budget of 20
        images with a (16, 2) code, seeds 0 and 1 fused, one CPU thread; GEM and iCaRL as published keep
        their batches of 10 (two per task); on the GEM split only the rows of
        :data:`SMOKE_SECOND_SPLIT_ROWS`."""
        rows_ = self.rows if self.split == SPLITS[0] else tuple(r for r in self.rows if r in SMOKE_SECOND_SPLIT_ROWS)
        return replace(self, rows=rows_, tasks=3, train_per_task=20, test_per_class=5, nf=2, replay=3,
                       budgets=(2, 5, 20), codes=((8, 2), (12, 2), (8, 3)), total_budget=20, total_code=(16, 2),
                       run_seeds=SMOKE_SEEDS, threads=1)

    def probe(self) -> "CifarRun":
        """:meth:`HarnessRun.probe <recollect.experiments.lifelong_common.HarnessRun.probe>` (GEM keeps
        the paper's 10 memories per task, budget // 20) with :data:`PROBE_TEST_PER_CLASS` test images
        per class (the eval loop's per-step time is then that of a small batch: evaluation is a small
        part of a run)."""
        return replace(super().probe(), test_per_class=PROBE_TEST_PER_CLASS)

    def row_configs(self) -> list:
        return row_configs(self)

    def gem_memories(self) -> tuple:
        return (self.total_budget // (self.tasks or FACTS["tasks"]),)

    def with_gem_memories(self, per: tuple, tasks: int) -> "CifarRun":
        return replace(self, total_budget=per[0] * tasks)


@dataclass(frozen=True)
class PretrainConfig:
    """Table 4's transfer source (section 5.2, appendix A.5): a categorical autoencoder of Table 4's
    code trained without labels on CIFAR-10, one per paper seed, fused.

    Paper profile: every CIFAR-10 image of the project's data file (``images=None``: its 5,000, the
    first 4,000 official training and 1,000 test images, not CIFAR-10's 50,000: see the chapter),
    50 epochs (the paper names none), minibatches of 64, Adam at 1e-3, BCE through the straight-through
    Gumbel-softmax (as every autoencoder of the book); distortion measured before and after on the
    CIFAR-10 images and on ``eval_images_per_class`` CIFAR-100 test images of every class."""
    code: tuple = tuple(paper.TABLE4_GENERATOR)
    images: int | None = None
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    ae_seeds: tuple = PAPER_SEEDS
    eval_images_per_class: int = 10
    eval_batch: int = 1000
    threads: int | None = None

    def smoke(self) -> "PretrainConfig":
        """500 images, 2 epochs, the smoke total code (16, 2), seeds 0 and 1, one CPU thread."""
        return replace(self, code=(16, 2), images=500, epochs=2, ae_seeds=SMOKE_SEEDS, eval_images_per_class=2,
                       threads=1)

    def probe(self) -> "PretrainConfig":
        """The paper's model and batch for 3 minibatches."""
        return replace(self, images=3 * self.batch_size, epochs=1, eval_images_per_class=1)


#: the paper profile, read in one place
PAPER = CifarRun()
PAPER_PRETRAIN = PretrainConfig()


def stream(cfg: CifarRun):
    """The task stream of ``cfg`` (its split, reduced as it says); built once per process and setting."""
    return _stream(cfg.split, cfg.tasks, cfg.train_per_task, cfg.test_per_class)


@functools.lru_cache(maxsize=2)
def _stream(split: str, tasks, train_per_task, test_per_class):
    # building a split from the data file takes about a second; the chapter asks for it several times
    st = data.cifar100_tasks(split)
    if any(v is not None for v in (tasks, train_per_task, test_per_class)):
        st = st.subset(train_per_task=train_per_task, test_per_class=test_per_class, tasks=tasks)
    return st


def _facts(cfg: CifarRun) -> dict:
    """Tasks, classes and images of ``cfg``'s stream (:func:`lifelong_common.run_facts`)."""
    return L.run_facts(cfg, FACTS, stream)


def rows(cfg: CifarRun, keys=None) -> list[dict]:
    """The rows of ``cfg`` (or the rows ``keys`` at ``cfg``'s settings).

    ``key`` names the paper's row a row stands for (``rehearsal-200``, ``total-transfer``, ...; the
    smoke profile's budgets are smaller), ``tables`` the tables it appears in, ``paper3`` / ``paper4``
    the paper's retention in Table 3 / Table 4 (GEM and iCaRL as published: the values the paper
    quotes from GEM's paper; their ``-adam`` rows: none, they are not the published methods),
    ``baseline`` ``published`` / ``harness`` for GEM and iCaRL (None otherwise), ``label`` what the
    tables show."""
    out = []
    for key in (cfg.rows if keys is None else keys):
        r = dict(key=key, code=None, ae_lr=None, budget_kind="incremental", transfer=False, paper3=None, paper4=None,
                 baseline=BASELINE_ROWS.get(key))
        if key == "online":
            r.update(tables=("3",), method="online", budget=0, paper_budget=0, paper3=paper.TABLE3[("online", 0)])
        elif key.startswith(("rehearsal-", "recollection-")):
            method, pb = key.split("-")
            i = PAPER_BUDGETS.index(int(pb))
            r.update(method=method, budget=cfg.budgets[i], paper_budget=int(pb), paper3=paper.TABLE3[(method, int(pb))])
            if method == "rehearsal":
                r.update(tables=("3", "4") if int(pb) == PAPER_TOTAL else ("3",),
                         paper4=paper.TABLE4["rehearsal"] if int(pb) == PAPER_TOTAL else None)
            else:
                r.update(tables=("3",), code=tuple(cfg.codes[i]), ae_lr=cfg.ae_lrs[i])
        elif key in ("total-scratch", "total-transfer"):
            transfer = key == "total-transfer"
            r.update(tables=("4",), method="recollection", budget=cfg.total_budget, paper_budget=PAPER_TOTAL,
                     code=tuple(cfg.total_code), ae_lr=cfg.ae_lr_transfer if transfer else cfg.ae_lr_scratch,
                     budget_kind="total", transfer=transfer,
                     paper4=paper.TABLE4[f"recollection, {'CIFAR-10 transfer' if transfer else 'no transfer'}"])
        elif key in BASELINE_ROWS:
            method = key.split("-")[0]
            published = BASELINE_ROWS[key] == "published"
            r.update(tables=("4",), method=method, budget=cfg.total_budget, paper_budget=PAPER_TOTAL,
                     paper4=paper.TABLE4["GEM" if method == "gem" else "iCaRL"] if published else None)
        else:
            raise ValueError(f"unknown row {key!r}; rows: {', '.join(ROWS)}")
        r["label"] = _label(r)
        out.append(r)
    return out


def _label(r: dict) -> str:
    m, b = r["method"], r["budget"]
    if m == "online":
        return "online"
    if m == "rehearsal":
        return f"rehearsal, {b} images"
    if m in ("gem", "icarl"):
        what = f"GEM, {b} memories" if m == "gem" else f"iCaRL, {b} exemplars"
        note = L.PUBLISHED_NOTE if r["baseline"] == "published" else L.HARNESS_NOTE
        return f"{what}, {note}"
    code = f"({r['code'][0]}, {r['code'][1]})"
    if r["budget_kind"] == "total":
        return f"recollections {code}, total {b}, {'CIFAR-10 transfer' if r['transfer'] else 'no transfer'}"
    return f"recollections {code}, bits of {b} images"


def row_configs(cfg: CifarRun, keys=None) -> list[LifelongConfig]:
    """A :class:`LifelongConfig` per row of :func:`rows` (same order). GEM and iCaRL as published take
    ``cfg.gem_*`` / ``cfg.icarl_*`` (``AS_PUBLISHED``); their ``-adam`` rows, and every other row, the
    profile's ``optimizer``, ``lr``, one example per step."""
    out = []
    for r in rows(cfg, keys):
        kw = dict(optimizer=cfg.optimizer, lr=cfg.lr)
        if r["method"] == "recollection":
            kw.update(code=tuple(r["code"]), ae_lr=float(r["ae_lr"]), budget_kind=r["budget_kind"])
        if r["baseline"] == "published" and r["method"] == "gem":
            kw.update(optimizer=cfg.gem_optimizer, lr=cfg.gem_lr, batch=cfg.gem_batch)
        if r["baseline"] == "published" and r["method"] == "icarl":
            kw.update(optimizer=cfg.icarl_optimizer, lr=cfg.icarl_lr, batch=cfg.icarl_batch,
                      icarl_distill=cfg.icarl_distill, icarl_features=cfg.icarl_features)
        out.append(LifelongConfig(
            method=r["method"], budget=r["budget"], steps=cfg.steps, replay=cfg.replay, model=cfg.model,
            model_kwargs={"nf": cfg.nf}, ae_replay=cfg.ae_replay, gem_margin=cfg.gem_margin, icarl_reg=cfg.icarl_reg,
            train_mask=cfg.train_mask, eval_batch=cfg.eval_batch, **kw))
    return out


# ------------------------------------------------------------------------------------------------
# the items
# ------------------------------------------------------------------------------------------------
def _seed_groups(pre: dict, seeds, code) -> dict:
    """The pretrained autoencoders of ``seeds`` (one group each) from the ``cifar10-ae`` payload."""
    if tuple(pre["code"]) != tuple(code):
        raise ValueError(f"the CIFAR-10 autoencoder has code {tuple(pre['code'])}, the run needs {tuple(code)}")
    have = [int(s) for s in pre["ae_seeds"]]
    missing = [s for s in seeds if s not in have]
    if missing:
        raise ValueError(f"the CIFAR-10 autoencoder item holds seeds {have}, not {missing}")
    idx = torch.tensor([have.index(int(s)) for s in seeds])
    return {k: v.index_select(0, idx).clone() for k, v in pre["state"].items()}


def _run(job) -> dict:
    """One fused run (module docstring); the payload of ``lifelong_common.payload_of``."""
    cfg = job.cfg
    with threads(cfg.threads):
        st = stream(cfg)
    rs, cfgs = rows(cfg), row_configs(cfg)
    init = None
    if any(r["transfer"] for r in rs):
        state = _seed_groups(job.dep("cifar10-ae"), cfg.run_seeds, cfg.total_code)
        init = [state if r["transfer"] else None for r in rs]
    desc = f"{cfg.split}: " + "+".join(dict.fromkeys(c.method for c in cfgs)) + f" {L.seed_tag(cfg.run_seeds)}"
    return L.run_fused(job, st, cfgs, cfg.run_seeds, ae_init=init, desc=desc, n_threads=cfg.threads)


def _loops(cfg: CifarRun) -> list:
    f = _facts(cfg)
    cfgs = row_configs(cfg)
    ok = any(plan_storage(c, IMAGE_SHAPE, f["tasks"], f["classes"]).runnable for c in cfgs)
    return L.lifelong_loops({r["method"] for r in rows(cfg)}, ok, f["train_sizes"], f["test_images"], f["tasks"],
                            cfg.eval_batch, cfgs[0].batch if cfgs else 1, grows=L.grows_with_tasks(cfgs))


def _cifar10_images(n: int | None) -> torch.Tensor:
    """All CIFAR-10 images the data file holds (train then test: no labels are used), or the first n."""
    x = torch.cat([data.cifar10("train").x, data.cifar10("test").x])
    return x if n is None else x[:n]


def _per_seed_vae(c: int, l: int, seeds) -> CategoricalVAE:
    models = []
    for s in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(s))
            models.append(CategoricalVAE(c, l, IMAGE_SHAPE))
    return models[0] if len(models) == 1 else stack_groups(models)


def _pretrain(job) -> dict:
    """The ``cifar10-ae`` item: Table 4's transfer source trained on CIFAR-10 (:class:`PretrainConfig`),
    resumable (a checkpoint about every 90 s, at the end of an epoch).

    Payload: ``state`` (the autoencoders' weights, one group per seed of ``ae_seeds``), ``code``,
    ``ae_seeds``, ``loss`` [epochs][S], ``distortion`` {before, after} x {CIFAR-10, CIFAR-100 test}
    [S] (mean absolute pixel error, pixels / 255, one stochastic pass), ``images``, ``available``,
    ``cifar100_images``."""
    pc, dev = job.cfg, job.device
    c, l = pc.code
    seeds = [int(s) for s in pc.ae_seeds]
    ck = Checkpointer(job.checkpoint_dir)
    with threads(pc.threads):
        x = _cifar10_images(pc.images)
        available = len(_cifar10_images(None))
        x100 = data.cifar100("test").per_class(pc.eval_images_per_class).x
        seed_everything(seeds[0])
        model = _per_seed_vae(c, l, seeds).to(dev)

        def distortions():
            return {"CIFAR-10": ae_distortion(model, x.to(dev), pc.eval_batch, generator(seeds[0] + 7, dev)).tolist(),
                    "CIFAR-100 test": ae_distortion(model, x100.to(dev), pc.eval_batch,
                                                    generator(seeds[0] + 8, dev)).tolist()}

        before = distortions()
        opt = GroupedAdam(model.parameters(), lr=float(pc.lr))
        shuffle = generator(seeds[0])
        state = dict(epoch=0, loss=[])
        saved = ck.load({"shuffle": shuffle})
        if saved is not None:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            state = saved["state"]

        def on_epoch_end(epoch, model, opt, losses):
            state["loss"].append([float(v) for v in losses[-1]])
            state["epoch"] = epoch + 1
            job.boundary(ck, lambda: dict(model=model.state_dict(), opt=opt.state_dict(), state=state),
                         {"shuffle": shuffle}, last=epoch + 1 >= pc.epochs, what="CIFAR-10 autoencoder")

        train_autoencoder(model, x, pc.epochs, pc.batch_size, float(pc.lr), shuffle, optimizer=opt,
                          start_epoch=state["epoch"], on_epoch_end=on_epoch_end, progress=job.progress,
                          desc="CIFAR-10 autoencoder")
        after = distortions()
    ck.done()
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return dict(state=weights, code=[int(c), int(l)], ae_seeds=seeds, loss=state["loss"],
                distortion=dict(before=before, after=after), images=len(x), available=available,
                cifar100_images=len(x100))


def _pretrain_loops(pc: PretrainConfig) -> list:
    n = CIFAR10_IMAGES if pc.images is None else min(pc.images, CIFAR10_IMAGES)
    n100 = 100 * pc.eval_images_per_class
    evals = 2 * (math.ceil(n / pc.eval_batch) + math.ceil(n100 / pc.eval_batch))
    return [Loop("epochs", pc.epochs * math.ceil(n / pc.batch_size), captured=True), Loop("eval", evals)]


def _item_name(split: str, group: str, seeds) -> str:
    return f"{SPLIT_PREFIX[split]}-{group}-{L.seed_tag(seeds)}"


FIRST_SEEDS = PAPER_SEEDS[:1]
MORE_SEEDS = PAPER_SEEDS[1:]
#: the fused runs of a split: name -> rows
GROUPS = {"fused": FUSED_ROWS, "gem": ("gem-200",), "icarl": ("icarl-200",), "gem-adam": ("gem-200-adam",),
          "icarl-adam": ("icarl-200-adam",)}
_WHAT = {"fused": "Tables 3 and 4: online, rehearsal and recollection rows (fused)",
         "gem": "Table 4: GEM, 200 memories, as published (SGD, batches of 10)",
         "icarl": "Table 4: iCaRL, 200 exemplars, as published (SGD, batches of 10)",
         "gem-adam": f"GEM, 200 memories, {L.HARNESS_NOTE}",
         "icarl-adam": f"iCaRL, 200 exemplars, {L.HARNESS_NOTE}"}


def _stage(split: str, group: str, first: bool) -> str:
    """``first``: every row of Tables 3 and 4 once on the coarse split, and GEM and iCaRL as published
    on both splits (on GEM's split they get the verdicts against the paper's 48.7 and 43.6); their
    other seeds ``seeds``; the fused rows on GEM's split and the harness-optimizer variants ``beyond``."""
    if group.endswith("-adam") or (group == "fused" and split != SPLITS[0]):
        return "beyond"
    return "first" if first else "seeds"


def _twin(split: str, group: str, first: bool) -> str | None:
    """The item whose smoke fingerprint versions this one (None: the smoke profile runs it). The smoke
    profile runs the seed-0 items of both splits, except the harness-optimizer variants on GEM's split
    (the same code path as on the coarse split)."""
    if group.endswith("-adam") and split != SPLITS[0]:
        return _item_name(SPLITS[0], group, FIRST_SEEDS)
    return None if first else _item_name(split, group, FIRST_SEEDS)


#: the run items in the order of the tables (the pretraining item comes first in the queue)
_RUN_ITEMS = [(split, group, seeds) for split in SPLITS for seeds in (FIRST_SEEDS, MORE_SEEDS) for group in GROUPS]


def _priority(split: str, group: str, seeds) -> int:
    """Queue order within a stage: GEM's split before coarse for GEM and iCaRL as published (the rows
    with a verdict), the fused run first, the seeds in order."""
    stage_base = {"first": 20, "seeds": 40, "beyond": 60}[_stage(split, group, seeds == FIRST_SEEDS)]
    g = list(GROUPS).index(group)
    s = SPLITS.index(split)
    if group in ("gem", "icarl"):
        s = 1 - s
    return stage_base + 10 * (seeds != FIRST_SEEDS) + 5 * s * (group != "fused") + g


def _register_all():
    register(Item(CHAPTER, "cifar10-ae", "Table 4's transfer source: the (76, 2) autoencoder trained on CIFAR-10",
                  config=lambda p: PAPER_PRETRAIN if p == "paper" else PAPER_PRETRAIN.smoke(), run=_pretrain,
                  loops=_pretrain_loops, priority=10, stage="first", data=("cifar10", "cifar100"),
                  reduction=(f"{CIFAR10_IMAGES:,} CIFAR-10 images (all the project's data file holds: the first "
                             "4,000 training and 1,000 test images), not CIFAR-10's 50,000 training images; "
                             f"{PAPER_PRETRAIN.epochs} epochs (the paper names none)"), resumable=True))
    for split, group, seeds in _RUN_ITEMS:
        first = seeds == FIRST_SEEDS
        stage = _stage(split, group, first)
        name = _item_name(split, group, seeds)
        base = replace(PAPER, split=split, rows=GROUPS[group], run_seeds=seeds)
        red = ""
        if first and stage == "first":
            red = (f"first pass: seed {seeds[0]} of the paper profile's {len(PAPER_SEEDS)}; seeds "
                   f"{', '.join(map(str, MORE_SEEDS))} follow in {_item_name(split, group, MORE_SEEDS)}")
        register(Item(CHAPTER, name, f"{split} split, {_WHAT[group]}, seeds {', '.join(map(str, seeds))}",
                      config=lambda p, base=base: base if p == "paper" else base.smoke(), run=_run,
                      loops=_loops, depends=("cifar10-ae",) if group == "fused" else (),
                      priority=_priority(split, group, seeds), stage=stage, reduction=red,
                      versioned_by=_twin(split, group, first), data=("cifar100",), resumable=True))


_register_all()


def item_keys() -> list[str]:
    """Every item of the chapter (the runs in table order, then the pretraining)."""
    return [f"{CHAPTER}/{_item_name(*k)}" for k in _RUN_ITEMS] + [f"{CHAPTER}/cifar10-ae"]


def _run_items(ctx) -> list:
    return L.select_items(ctx, [get_item(k) for k in item_keys()[:-1]])


# ------------------------------------------------------------------------------------------------
# settings and accounting (no training)
# ------------------------------------------------------------------------------------------------
def _cfg(ctx, split: str = "coarse") -> CifarRun:
    """The chapter's settings at ``ctx``'s profile for ``split`` (every row it runs there)."""
    base = replace(PAPER, split=split, rows=ROWS)
    return base if not ctx.smoke else base.smoke()


def settings(ctx) -> pd.DataFrame:
    """The chapter's settings at ``ctx``'s profile, one row per aspect; the row counts come from
    :func:`rows` (not written by hand)."""
    c, g = _cfg(ctx), _cfg(ctx, SPLITS[1])
    pc = PAPER_PRETRAIN if not ctx.smoke else PAPER_PRETRAIN.smoke()
    its = _run_items(ctx)
    seeds = sorted({s for it in its for s in it.cfg(ctx.profile).run_seeds})
    if c.full:
        stream_s = "all 20 tasks, 2,500 training and 500 test images each"
    else:
        stream_s = (f"the first {c.tasks} tasks, their first {c.train_per_task} training examples, "
                    f"{c.test_per_class} test images per class")
    per_stage = {s: sum(it.stage == s for it in its) for s in ("first", "seeds", "beyond")}
    imgs = f"{pc.images:,} of the data file's" if pc.images is not None else "all"
    opt, lr = c.optimizer.title(), L.lr_text
    gem, icarl = (row_configs(c, [k])[0] for k in ("gem-200", "icarl-200"))
    t4 = (f"{c.total_budget} images: {tuple(c.total_code)} code at lr {lr(c.ae_lr_scratch)} from scratch, "
          f"{lr(c.ae_lr_transfer)} from CIFAR-10 (A.5); GEM and iCaRL with {c.total_budget} memories")
    items = (f"{len(its) + 1}: the CIFAR-10 autoencoder and {per_stage['first']} first-pass runs, "
             f"{per_stage['seeds']} runs of more seeds, {per_stage['beyond']} beyond the paper (GEM's split's "
             "online, rehearsal and recollection rows; GEM and iCaRL with this harness's optimizer)")
    return pd.DataFrame([{"setting": k, "value": v} for k, v in [
        ("stream", stream_s + "; one pass; splits coarse (the paper's text) and gem (GEM's)"),
        ("reasoning model", f"GEM's ResNet-18, nf = {c.nf}, 100 outputs, task masks; {opt} at lr {lr(c.lr)} "
                            "for the online, rehearsal and recollection rows (A.4, A.5)"),
        ("per incoming example", f"{c.steps} gradient step on the example and {c.replay} items drawn from the "
                                 "buffer (online, rehearsal, recollections)"),
        ("Table 3 budgets (images)", ", ".join(map(str, c.budgets)) + " (the paper's "
                                     + ", ".join(map(str, PAPER_BUDGETS)) + ")"),
        ("Table 3 autoencoders", "; ".join(f"{tuple(cd)} at lr {lr(v)}" for cd, v in zip(c.codes, c.ae_lrs))
                                 + " (A.4)"),
        ("Table 4 total budget", t4),
        ("GEM, as published", f"{L.optimizer_text(gem)}; {gem.budget // max(1, _facts(c)['tasks'])} memories per "
                              "task (GEM's code, run_experiments.sh CIFAR_100i, at Table 4's 200 memories)"),
        ("iCaRL, as published", f"{L.optimizer_text(icarl)}; {icarl.budget} exemplars (GEM's code, as above)"),
        ("GEM and iCaRL, " + L.HARNESS_NOTE,
         f"{opt} at lr {lr(c.lr)}, one example per step; iCaRL: {c.replay} exemplars per step, class means of the "
         "penultimate features (iCaRL's paper)"),
        ("CIFAR-10 autoencoder", f"{tuple(pc.code)} on {imgs} CIFAR-10 images, {pc.epochs} epochs, batch "
                                 f"{pc.batch_size}, Adam at {lr(pc.lr)}"),
        ("rows per split", f"{len(rows(c))} on {c.split}, {len(rows(g))} on {g.split}"),
        ("seeds", ", ".join(map(str, seeds)) + (" (fused in every run)" if ctx.smoke
                                                else "; the first pass runs seed 0")),
        ("items", items),
    ]])


def items_table() -> pd.DataFrame:
    """The chapter's items at the paper profile, in the queue's order (stage, then priority): stage,
    seeds, dependencies, reductions."""
    stages = ("first", "seeds", "beyond")
    keys = sorted(item_keys(), key=lambda k: (stages.index(get_item(k).stage), get_item(k).priority))
    return L.items_table(keys, lambda cfg: getattr(cfg, "run_seeds", None) or cfg.ae_seeds)


def storage_table(ctx) -> pd.DataFrame:
    """What every row of the profile stores within its budget (``plan_storage``: the numbers the
    harness runs with), with the memory each row holds in words, and what a row holds beyond that
    while a task runs (``task_images``: iCaRL keeps the whole current task until it ends; GEM on
    batches of 10 the rest of its incoming batch), with the peak."""
    c = _cfg(ctx)
    f = _facts(c)
    out = []
    for r, lc in zip(rows(c), row_configs(c)):
        p = plan_storage(lc, IMAGE_SHAPE, f["tasks"], f["classes"], task_images=f["max_train_per_task"])
        out.append(L.storage_row(r["label"], "budget (images)", r["budget"], p,
                                 L.memory_text(lc, vars(p), f["tasks"], f["max_train_per_task"])))
    df = pd.DataFrame(out)
    for col in ("bits used", "held while a task runs", "peak bits"):
        df[col] = df[col].astype("Int64")
    return df


def code_accounting() -> pd.DataFrame:
    """Table 3's generators under the incremental budgets of 10, 50 and 200 CIFAR images (no
    training, the same at every profile): the bits of one code with eq 1 (simple binary encoding,
    ``c * ceil(log2 l)``), as one mixed-radix number (``ceil(c log2 l)``) and with the chunked
    packing the buffers use (``recollect.codes``), and how many codes fit each way; the harness
    stores the last."""
    out = []
    for b in PAPER_BUDGETS:
        c, l = paper.TABLE3_GENERATORS[b]
        bits = b * IMAGE_BITS
        e1, mr, pk = accounting.sbe_bits(c, l), accounting.mixed_radix_bits(c, l), packed_bits(c, l)
        out.append({"budget (images)": b, "budget bits": bits, "code (c, l)": f"({c}, {l})",
                    "C_ve = c log2 l": round(accounting.capacity_bits(c, l), 2),
                    "eq 1 bits": e1, "codes (eq 1)": accounting.recollections_that_fit(bits, e1),
                    "mixed-radix bits": mr, "codes (mixed radix)": accounting.recollections_that_fit(bits, mr),
                    "packed bits (ours)": pk, "codes (ours, used)": accounting.recollections_that_fit(bits, pk),
                    "paper's recollections": paper.TABLE3_RECOLLECTIONS})
    return pd.DataFrame(out)


def total_accounting(code=None, budget: int = PAPER_TOTAL) -> pd.DataFrame:
    """Table 4's total budget (section 3.2, eq 4): the autoencoder's parameters (appendix A's
    architecture, ``c*l/4`` filters, counted on the real model at 32 bits each) plus the codes must
    fit ``budget`` CIFAR images. Also the range of parameter counts that the paper's 1,392
    recollections imply (a count outside it would not give exactly 1,392 codes)."""
    c, l = code or paper.TABLE4_GENERATOR
    model = CategoricalVAE(int(c), int(l), IMAGE_SHAPE)
    params = accounting.param_count(model)
    pbits = accounting.param_bits(model)
    bits = budget * IMAGE_BITS
    per = packed_bits(c, l)
    n = accounting.recollections_that_fit(bits, per, pbits)
    paper_n = paper.TABLE4_RECOLLECTIONS
    # n codes fit exactly iff n * per <= bits - 32 P < (n + 1) * per
    lo = math.floor((bits - (paper_n + 1) * per) / 32) + 1
    hi = math.floor((bits - paper_n * per) / 32)
    return pd.DataFrame([{
        "code (c, l)": f"({c}, {l})", "filters (c l / 4)": model.latent_channels, "parameters (ours)": params,
        "parameter bits": pbits, "budget bits": bits, "share of budget (%)": round(100 * pbits / bits, 2),
        "bits left for codes": bits - pbits, "bits per code": per, "codes (ours)": n,
        "paper's recollections": paper_n, "parameter counts giving the paper's count": f"{lo:,} to {hi:,}",
        "bits used": n * per + pbits}])


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------
def pretrain(ctx) -> dict | Missing:
    """The payload of the ``cifar10-ae`` item (:func:`_pretrain`), or a :class:`Missing`."""
    return result(ctx, f"{CHAPTER}/cifar10-ae")


@needs_results
def pretrain_table(pre: dict) -> pd.DataFrame:
    """Distortion of the CIFAR-10 autoencoder before and after pretraining (mean ± sd over seeds)."""
    out = []
    for data_name in ("CIFAR-10", "CIFAR-100 test"):
        for when in ("before", "after"):
            v = np.array(pre["distortion"][when][data_name])
            out.append({"images": data_name, "autoencoder": "random init" if when == "before" else "pretrained",
                        "distortion": float(v.mean()), "± sd": float(v.std(ddof=1)) if len(v) > 1 else float("nan")})
    return pd.DataFrame(out)


@needs_results
def pretrain_line(pre: dict) -> str:
    return (f"pretrained on {pre['images']:,} of the {pre['available']:,} CIFAR-10 images the data file holds (train "
            f"and test, no labels) for {len(pre['loss'])} epochs, seeds {', '.join(map(str, pre['ae_seeds']))}; "
            f"distortion also on {pre['cifar100_images']:,} CIFAR-100 test images")


def _payloads(ctx):
    """``([(item, cfg, payload)], missing)`` of the runs this rendering uses."""
    return L.payloads(ctx, _run_items(ctx))


def _order(s: pd.Series) -> pd.Series:
    if s.name == "key":
        return s.map({k: i for i, k in enumerate(ROWS)})
    if s.name == "split":
        return s.map({k: i for i, k in enumerate(SPLITS)})
    return s


def describe_streams(ctx) -> pd.DataFrame | Missing:
    """Tasks, classes and images of each split's stream (and the classes of its first tasks), from
    the stream facts the results carry (no dataset needed at the paper profile)."""
    runs, missing = _payloads(ctx)
    if not runs:
        return Missing(missing)
    out = {}
    for it, cfg, pl in runs:
        f = pl["stream"]
        out.setdefault(cfg.split, {"split": cfg.split, "tasks": f["tasks"], "classes": f["classes"],
                                   "training images": f["train_images"], "test images": f["test_images"],
                                   "task 1 classes": ", ".join(map(str, f["task_classes"][0])),
                                   "task 2 classes": ", ".join(map(str, f["task_classes"][1]))
                                   if len(f["task_classes"]) > 1 else "-"})
    # a split with no result yet is a row that says so, not a row left out
    if all(s in out for s in SPLITS):
        return pd.DataFrame([out[s] for s in SPLITS])
    return pd.DataFrame([out.get(s, {"split": s, "tasks": "no result yet"}) for s in SPLITS], dtype=object).fillna("-")


def run_rows(ctx) -> pd.DataFrame | Missing:
    """One row per (split, method row, seed): ACC (retention), BWT, FWT, LA, task-aware (``_task``)
    and class-incremental (``_class``), with the storage, the optimizer and memory of the row, the
    paper's numbers and the item it comes from. At the paper profile, the rows of items not yet made
    are left out (``attrs["missing"]``)."""
    runs, missing = _payloads(ctx)
    if not runs:
        return Missing(missing)
    classes = {it.key: pl["stream"]["classes"] for it, _, pl in runs}

    def fields(it, cfg, r):
        return {"split": cfg.split, "item": it.name, "key": r["key"], "row": r["label"],
                "tables": "+".join(r["tables"]), "method": r["method"], "baseline": r["baseline"],
                "budget": r["budget"], "paper_budget": r["paper_budget"], "paper3": r["paper3"],
                "paper4": r["paper4"], "classes": classes[it.key]}

    df = pd.DataFrame(L.run_records(runs, rows, fields)).sort_values(["split", "key", "seed"], key=_order, kind="stable").reset_index(drop=True)
    df.attrs["missing"] = list(missing)
    return df


def accuracy_curves(ctx) -> pd.DataFrame | Missing:
    """The accuracy matrices as a tidy table: split, row, seed, ``after`` (tasks learned, 0 = random
    init), ``task``, ``task_aware`` and ``class_incremental`` accuracy (%)."""
    runs, missing = _payloads(ctx)
    if not runs:
        return Missing(missing)
    out = []
    for it, cfg, pl in runs:
        for r, res in zip(rows(cfg), L.results_of(pl)):
            if res.runnable:
                out.append(res.curves(split=cfg.split, key=r["key"], row=r["label"], method=r["method"],
                                      budget=r["budget"]))
    df = pd.concat(out, ignore_index=True)
    return df.sort_values(["split", "key", "seed", "after", "task"], key=_order, kind="stable").reset_index(drop=True)


@needs_results
def runs_line(df: pd.DataFrame) -> str:
    """What the tables below are made of: items, rows, seeds (and what is not made yet)."""
    seeds = sorted(df.seed.unique().tolist())
    out = (f"{df['item'].nunique()} runs, {df.drop_duplicates(['split', 'key']).shape[0]} (split, row) pairs, "
           f"seeds {', '.join(map(str, seeds))}: {len(df)} (split, row, seed) results")
    if df.attrs.get("missing"):
        out += f"; not made yet: {', '.join(k.split('/')[-1] for k in df.attrs['missing'])}"
    return out


# ------------------------------------------------------------------------------------------------
# tables (the claims: recollect.claims.lifelong_cifar)
# ------------------------------------------------------------------------------------------------
RUN_WITH = L.RUN_WITH
_FIRST = ("row", "method", "baseline", "items", "paper3", "paper4", "runnable", "reason", "optimizer", "memory")


def _no_verdict(r) -> str | None:
    if not r["runnable"]:
        return f"cannot run ({r['reason']})"
    if r["baseline"] == "harness":
        return "not the published method (this harness's optimizer)"
    if r["baseline"] == "published" and r["split"] != "gem":
        return "the paper's value was made on GEM's split (compared there)"
    return None


def _not_made(df: pd.DataFrame, wanted) -> Missing:
    """A :class:`Missing` naming the items not made yet (``df.attrs["missing"]``) that hold a row
    ``wanted(row)`` accepts (:func:`rows`): what a table of a partly made chapter waits for."""
    keys = [k for k in df.attrs.get("missing", []) if any(wanted(r) for r in rows(get_item(k).cfg("paper")))]
    return Missing(keys or list(df.attrs.get("missing", [])) or ["(no item)"])


def _compare(df: pd.DataFrame, table: str, measure: str):
    sel = df[df.tables.str.contains(table)]
    if sel.empty:
        m = _not_made(df, lambda r: table in r["tables"])
        return m, m
    a = L.aggregate(sel, ["split", "key"], f"ACC_{measure}", _FIRST)
    return L.compare_records(a, "paper3" if table == "3" else "paper4", ("split", "row"), _no_verdict)


@needs_results
def compare_rows(df: pd.DataFrame, table: str, measure: str = "task") -> list[dict]:
    """Rows for ``report.compare`` of Table ``table`` ("3" or "4") on the retention (``measure`` =
    ``task`` or ``class``), both splits, each with the optimizer, learning rates, batch and memory it
    ran with (issue 15: every baseline row states them in the table itself). A :class:`Missing`
    when none of the table's rows is made yet."""
    return _compare(df, table, measure)[0]


@needs_results
def no_verdicts(df: pd.DataFrame, table: str, measure: str = "task") -> dict:
    """The rows of :func:`compare_rows` that get no verdict, with the reason, keyed as
    ``report.compare`` expects: a row that cannot run; GEM and iCaRL with this harness's optimizer
    (not the published methods); GEM and iCaRL as published on the coarse split (the paper's 48.7 and
    43.6 were made on GEM's split, where these rows get their verdict)."""
    return _compare(df, table, measure)[1]


@needs_results
def online_table(df: pd.DataFrame) -> pd.DataFrame:
    """Our online row (Adam, 1e-3, one example per step) beside the probe's online baseline (plain
    SGD, minibatches of 10, lr 0.1 and 1.0) and the paper's Table 3 online row, per split."""
    if not (df.key == "online").any():
        return _not_made(df, lambda r: r["key"] == "online")
    out = []
    for split, g in df[df.key == "online"].groupby("split", sort=False):
        out.append({"split": split, "ours (Adam 1e-3, 1 example per step)": float(g.ACC_task.mean()),
                    "± sd": float(g.ACC_task.std(ddof=1)) if len(g) > 1 else float("nan"),  # one run: no spread
                    "probe: SGD 0.1, batch 10": PROBE_ONLINE.get((split, 0.1)),
                    "probe: SGD 1.0, batch 10": PROBE_ONLINE.get((split, 1.0)),
                    "paper (Table 3)": paper.TABLE3[("online", 0)]})
    return pd.DataFrame(out)


@needs_results
def transfer_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of ACC, BWT, FWT and LA (GEM's definitions, divided by T - 1), task-aware and
    class-incremental, per split and row."""
    return L.transfer_means(df, ["split", "row"])
