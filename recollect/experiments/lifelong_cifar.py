"""Chapter "lifelong learning on incremental CIFAR-100": paper section 5.2, Tables 3 and 4, appendices
A.4 and A.5.

Twenty tasks of five CIFAR-100 classes, learned in order, one example at a time, in a single pass, by
GEM's reduced ResNet-18 (nf = 20, 100 outputs, task masks), in the lifelong harness
``recollect.train.lifelong`` (reservoir sampling into every buffer; every task evaluated after every
task). Two task splits, side by side (``recollect.data.cifar100_tasks``): ``coarse`` (task t = the
five fine classes of superclass t, the paper's text) and ``gem`` (task t = fine labels 5t .. 5t+4,
GEM's split, which the paper cites).

* **Table 3** (incremental storage, section 3.1): online (no buffer); rehearsal with 10, 50 and 200
  lossless images; the recollection generator with the bits of 10, 50 and 200 images, codes of
  (48, 2), (244, 2) and (620, 3) (``paper.TABLE3_GENERATORS``), autoencoder learning rate 1e-3,
  1e-3, 1e-4 (appendix A.4). The number of codes comes from the real packed size of a code
  (``recollect.codes.packed_bits``), not from the paper's rounded 5,000 (:func:`code_accounting`).
* **Table 4** (total storage, section 3.2): 200 images' bits for codes *and* the autoencoder's
  parameters (32 bits each): a (76, 2) autoencoder from scratch (autoencoder lr 1e-3) and one
  initialised from an autoencoder trained on CIFAR-10 (:func:`pretrain`, lr 3e-4, appendix A.5);
  rehearsal with 200 images (Table 3's run); GEM (per-task episodic memory) and iCaRL (herding
  exemplars) with 200 memories, in the same harness, beside the values the paper quotes.

Experiments (each cached by its config; the lifelong runs are checkpointed after every task, the
pretraining after every epoch, so a paper run resumes where it stopped):

* :func:`pretrain` -- the CIFAR-10 autoencoder of Table 4's transfer row (its own cached experiment).
* :func:`run_rows` -- one row per (split, method row, seed): retention (ACC), BWT, FWT, LA,
  task-aware and class-incremental.
* :func:`accuracy_curves` -- the accuracy matrices as a tidy table (the figures).
* :func:`storage_table`, :func:`code_accounting`, :func:`total_accounting` -- what every row stores
  (no training).

Configurations that share the network and the schedule (online, rehearsal and recollection rows of
both tables) train as ONE fused model per split, one group per (row, seed); GEM and iCaRL run on
their own, their seeds fused.
"""
from __future__ import annotations

import functools
import math
import time

import numpy as np
import pandas as pd
import torch

from .. import accounting, data, paper
from ..cache import config_key
from ..codes import packed_bits
from ..grouped import GroupedAdam, stack_groups
from ..models import CategoricalVAE
from ..train.autoencoder import distortion as ae_distortion
from ..train.autoencoder import train_autoencoder
from ..train.lifelong import LifelongConfig, LifelongResult, fuse_groups, n_train_classes, plan_storage, run_lifelong
from ..utils import generator, seed_everything, threads
# shared with the Omniglot lifelong chapter (same harness): the thread pinning of smoke runs

__all__ = ["BAND", "NAME", "SPLITS", "IMAGE_SHAPE", "IMAGE_BITS", "PAPER_BUDGETS", "PAPER_SEEDS", "PROBE_ONLINE",
           "config", "stream", "describe_streams", "rows", "row_configs", "storage_table", "code_accounting",
           "total_accounting", "pretrain", "pretrain_table", "run_results", "run_rows", "accuracy_curves",
           "compare_rows", "online_table", "transfer_table", "claims", "training_seconds", "figure_task_curves",
           "figure_final_per_task", "figure_average"]

NAME = "lifelong-cifar100"
#: Tolerance band of the verdicts, in retention points (absolute): agrees within 3, close within 6.
BAND = 3.0
SPLITS = ("coarse", "gem")
IMAGE_SHAPE = (3, 32, 32)
IMAGE_BITS = accounting.image_bits(IMAGE_SHAPE)  # 24,576 (section 3)
#: the paper's incremental budgets (Table 3) and total budget (Table 4), in full examples
PAPER_BUDGETS = (10, 50, 200)
PAPER_TOTAL = 200
#: seeds of the paper profile (the first three of the context's): each row is run this many times
PAPER_SEEDS = 3
#: Not paper numbers: the online baseline measured by the early probes (../shared/probe-notes.md,
#: "Online baseline on incremental CIFAR-100"): GEM's ResNet-18, one pass, minibatches of 10, plain
#: SGD at lr 0.1 and 1.0, task-masked logits. (split, lr) -> final average accuracy (%).
PROBE_ONLINE = {("coarse", 0.1): 25.8, ("coarse", 1.0): 33.9, ("gem", 0.1): 41.0, ("gem", 1.0): 55.1}
#: Not a paper number: GEM's published CIFAR-100 settings (its run_experiments.sh), for the notes:
#: minibatches of 10, SGD lr 0.1 for GEM (memory_strength 0.5), lr 1.0 for iCaRL and the single model.


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
def config(ctx) -> dict:
    """Every setting of the chapter, from the profile.

    ``paper``: both splits, all 20 tasks (2,500 training and 500 test images each), GEM's ResNet-18
    (nf = 20), 10 buffer items per step, one step per example, Adam at 1e-3 for the reasoning model
    of every row (appendix A.4), budgets 10 / 50 / 200 with the paper's codes and autoencoder
    learning rates, Table 4 at a total of 200 images with a (76, 2) code; the CIFAR-10 autoencoder
    trained on all 5,000 CIFAR-10 images of the data file for 50 epochs; the first three seeds.

    ``smoke``: the first 3 tasks, their first 20 training examples and 5 test images per class, nf =
    2, 3 buffer items per step, budgets 2 / 5 / 20 (2 and 5 below the 15 classes, like the paper's
    10 and 50 below its 100), codes (8, 2), (12, 2), (8, 3), Table 4 at 20 images with a (16, 2)
    code, the CIFAR-10 autoencoder on 500 images for 2 epochs, two seeds, one CPU thread; the GEM
    split runs only online, the largest rehearsal and the largest recollection row.
    """
    smoke = ctx.smoke
    seeds = [int(s) for s in (ctx.seeds[:2] if smoke else ctx.seeds[:PAPER_SEEDS])]
    if smoke:
        budgets, codes = [2, 5, 20], {2: [8, 2], 5: [12, 2], 20: [8, 3]}
        total = dict(budget=20, code=[16, 2])
    else:
        budgets = list(PAPER_BUDGETS)
        codes = {b: list(paper.TABLE3_GENERATORS[b]) for b in budgets}
        total = dict(budget=PAPER_TOTAL, code=list(paper.TABLE4_GENERATOR))
    # appendix A.4: the autoencoder's learning rate is 1e-4 for the buffer of 200, 1e-3 for the others
    ae_lr = {str(b): 1e-4 if pb == 200 else 1e-3 for b, pb in zip(budgets, PAPER_BUDGETS)}
    # appendix A.5: 1e-3 without transfer, 3e-4 for the autoencoder initialised from CIFAR-10
    total.update(ae_lr_scratch=1e-3, ae_lr_transfer=3e-4)
    return dict(
        splits=list(SPLITS),
        stream=dict(tasks=3 if smoke else None, train_per_task=20 if smoke else None,
                    test_per_class=5 if smoke else None),
        # rows run on the second split (None: all of them)
        second_split_rows=["online", "rehearsal-200", "recollection-200"] if smoke else None,
        seeds=seeds, model="resnet18", nf=2 if smoke else 20, replay=3 if smoke else 10, steps=1,
        lr=1e-3, optimizer="adam", train_mask="task", ae_replay="autoencode", gem_margin=0.5, icarl_reg=1.0,
        budgets=budgets, codes={str(b): c for b, c in codes.items()}, ae_lr=ae_lr, total=total,
        pretrain=dict(code=list(total["code"]), images=500 if smoke else None, epochs=2 if smoke else 50,
                      batch_size=64, lr=1e-3, loss="bce", seeds=seeds, eval_images_per_class=2 if smoke else 10),
        threads=1 if smoke else None, device=ctx.device.type,
    )


def stream(cfg: dict, split: str):
    """The task stream of ``split`` (``coarse`` or ``gem``), reduced as the config says."""
    s = cfg["stream"]
    return _stream(split, s["tasks"], s["train_per_task"], s["test_per_class"])


@functools.lru_cache(maxsize=2)
def _stream(split: str, tasks, train_per_task, test_per_class):
    # building a split from the data file takes about a second; the chapter asks for it several times
    st = data.cifar100_tasks(split)
    if any(v is not None for v in (tasks, train_per_task, test_per_class)):
        st = st.subset(train_per_task=train_per_task, test_per_class=test_per_class, tasks=tasks)
    return st


def describe_streams(cfg: dict) -> pd.DataFrame:
    """Tasks, classes and images of each split's stream (and the classes of its first tasks)."""
    out = []
    for split in cfg["splits"]:
        st = stream(cfg, split)
        out.append({"split": split, "tasks": st.n_tasks, "classes": n_train_classes(st),
                    "training images": sum(len(s) for s in st.train), "test images": sum(len(s) for s in st.test),
                    "task 1 classes": ", ".join(str(int(c)) for c in st.task_classes[0]),
                    "task 2 classes": ", ".join(str(int(c)) for c in st.task_classes[1])})
    return pd.DataFrame(out)


def rows(cfg: dict, split: str | None = None) -> list[dict]:
    """The chapter's rows (all of them, or those run on ``split``).

    ``key`` names the paper's row a row stands for (``rehearsal-200``, ``total-transfer``, ...; the
    smoke profile's budgets are smaller), ``tables`` the tables it appears in, ``paper`` the
    paper's retention for Table 3 and for Table 4 (GEM and iCaRL: the values the paper quotes from
    GEM's paper)."""
    t = cfg["total"]
    out = [dict(key="online", tables=("3",), method="online", budget=0, paper_budget=0,
                paper3=paper.TABLE3[("online", 0)], paper4=None)]
    for b, pb in zip(cfg["budgets"], PAPER_BUDGETS):
        out.append(dict(key=f"rehearsal-{pb}", tables=("3", "4") if pb == PAPER_TOTAL else ("3",), method="rehearsal",
                        budget=b, paper_budget=pb, paper3=paper.TABLE3[("rehearsal", pb)],
                        paper4=paper.TABLE4["rehearsal"] if pb == PAPER_TOTAL else None))
    for b, pb in zip(cfg["budgets"], PAPER_BUDGETS):
        out.append(dict(key=f"recollection-{pb}", tables=("3",), method="recollection", budget=b, paper_budget=pb,
                        code=cfg["codes"][str(b)], ae_lr=cfg["ae_lr"][str(b)],
                        paper3=paper.TABLE3[("recollection", pb)], paper4=None))
    out.append(dict(key="total-scratch", tables=("4",), method="recollection", budget=t["budget"],
                    paper_budget=PAPER_TOTAL, code=t["code"], ae_lr=t["ae_lr_scratch"], budget_kind="total",
                    paper3=None, paper4=paper.TABLE4["recollection, no transfer"]))
    out.append(dict(key="total-transfer", tables=("4",), method="recollection", budget=t["budget"],
                    paper_budget=PAPER_TOTAL, code=t["code"], ae_lr=t["ae_lr_transfer"], budget_kind="total",
                    transfer=True, paper3=None, paper4=paper.TABLE4["recollection, CIFAR-10 transfer"]))
    out.append(dict(key="gem-200", tables=("4",), method="gem", budget=t["budget"], paper_budget=PAPER_TOTAL,
                    paper3=None, paper4=paper.TABLE4["GEM"]))
    out.append(dict(key="icarl-200", tables=("4",), method="icarl", budget=t["budget"], paper_budget=PAPER_TOTAL,
                    paper3=None, paper4=paper.TABLE4["iCaRL"]))
    for r in out:
        r.setdefault("code", None)
        r.setdefault("ae_lr", None)
        r.setdefault("budget_kind", "incremental")
        r.setdefault("transfer", False)
        r["label"] = _label(r)
    if split is not None and split != cfg["splits"][0] and cfg["second_split_rows"] is not None:
        out = [r for r in out if r["key"] in cfg["second_split_rows"]]
    return out


def _label(r: dict) -> str:
    m, b = r["method"], r["budget"]
    if m == "online":
        return "online"
    if m == "rehearsal":
        return f"rehearsal, {b} images"
    if m == "gem":
        return f"GEM, {b} memories"
    if m == "icarl":
        return f"iCaRL, {b} exemplars"
    code = f"({r['code'][0]}, {r['code'][1]})"
    if r["budget_kind"] == "total":
        return f"recollections {code}, total {b}, {'CIFAR-10 transfer' if r['transfer'] else 'no transfer'}"
    return f"recollections {code}, bits of {b} images"


def row_configs(cfg: dict, split: str | None = None) -> list[LifelongConfig]:
    """A :class:`LifelongConfig` per row of :func:`rows` (same order)."""
    out = []
    for r in rows(cfg, split):
        extra = {}
        if r["method"] == "recollection":
            extra = dict(code=tuple(r["code"]), ae_lr=float(r["ae_lr"]), budget_kind=r["budget_kind"])
        out.append(LifelongConfig(
            method=r["method"], budget=r["budget"], steps=cfg["steps"], replay=cfg["replay"], lr=cfg["lr"],
            optimizer=cfg["optimizer"], model=cfg["model"], model_kwargs={"nf": cfg["nf"]},
            ae_replay=cfg["ae_replay"], gem_margin=cfg["gem_margin"], icarl_reg=cfg["icarl_reg"],
            train_mask=cfg["train_mask"], **extra))
    return out


# ------------------------------------------------------------------------------------------------
# accounting (no training)
# ------------------------------------------------------------------------------------------------
def storage_table(ctx) -> pd.DataFrame:
    """What every row of the profile stores within its budget (``plan_storage``: the numbers the
    harness runs with)."""
    cfg = config(ctx)
    st = stream(cfg, cfg["splits"][0])
    ncls = n_train_classes(st)
    out = []
    for r, c in zip(rows(cfg), row_configs(cfg)):
        p = plan_storage(c, st.image_shape, st.n_tasks, ncls)
        out.append({"row": r["label"], "budget (images)": r["budget"], "budget bits": p.budget_bits,
                    "stored item": p.item, "bits per item": p.bits_per_item, "items stored": p.capacity,
                    "autoencoder bits": p.fixed_bits, "bits used": p.used_bits if p.runnable else np.nan,
                    "runs": "yes" if p.runnable else f"no: {p.reason}"})
    return pd.DataFrame(out)


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
# Table 4's CIFAR-10 autoencoder (its own cached, resumable experiment)
# ------------------------------------------------------------------------------------------------
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


def pretrain(ctx, progress: bool | None = None) -> dict:
    """Table 4's transfer source (section 5.2, appendix A.5): a categorical autoencoder of Table 4's
    code trained, without labels, on the CIFAR-10 images of the data file, one per seed (fused).

    Adam, BCE reconstruction loss through the straight-through Gumbel-softmax (as every autoencoder
    of the book). Checkpointed after every epoch. Returns ``{state (one group per seed), loss
    [epochs][S], distortion {...}, images, seconds}``: ``distortion`` is the mean absolute pixel
    error (pixels / 255, one stochastic pass) on the CIFAR-10 images and on CIFAR-100 test images
    (``eval_images_per_class`` of every class), before (random init) and after pretraining."""
    cfg = config(ctx)
    pc = cfg["pretrain"]
    key_cfg = dict(pc, device=cfg["device"])
    key = config_key(NAME + "-cifar10-ae", key_cfg)
    progress = (not ctx.smoke) if progress is None else progress
    dev = ctx.device

    def fn():
        c, l = pc["code"]
        seeds = pc["seeds"]
        x = _cifar10_images(pc["images"])
        available = len(_cifar10_images(None))
        x100 = data.cifar100("test").per_class(pc["eval_images_per_class"]).x
        with threads(cfg["threads"]):
            seed_everything(seeds[0])
            model = _per_seed_vae(c, l, seeds).to(dev)
            noise = generator(seeds[0] + 7, dev)
            before = {"CIFAR-10": ae_distortion(model, x.to(dev), 1000, noise).tolist(),
                      "CIFAR-100 test": ae_distortion(model, x100.to(dev), 1000, generator(seeds[0] + 8, dev)).tolist()}
            opt = GroupedAdam(model.parameters(), lr=float(pc["lr"]))
            shuffle = generator(seeds[0])
            state = dict(epoch=0, loss=[], seconds=0.0, before=before)
            ck = ctx.cache.get_checkpoint(key)
            if ck is not None:
                model.load_state_dict(ck["model"])
                opt.load_state_dict(ck["opt"])
                shuffle.set_state(ck["shuffle"])
                if dev.type == "cuda" and ck.get("cuda_rng") is not None:
                    torch.cuda.set_rng_state(ck["cuda_rng"], dev)
                state = ck["state"]
            clock = [time.perf_counter()]

            def on_epoch_end(epoch, model, opt, losses):
                state["loss"].append([float(v) for v in losses[-1]])
                state["epoch"] = epoch + 1
                now = time.perf_counter()
                state["seconds"] += now - clock[0]
                clock[0] = now
                rng = torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None
                ctx.cache.put_checkpoint(key, dict(model=model.state_dict(), opt=opt.state_dict(),
                                                   shuffle=shuffle.get_state(), state=state, cuda_rng=rng))

            train_autoencoder(model, x, pc["epochs"], pc["batch_size"], float(pc["lr"]), shuffle, optimizer=opt,
                              start_epoch=state["epoch"], on_epoch_end=on_epoch_end, progress=progress,
                              desc="CIFAR-10 autoencoder")
            after = {"CIFAR-10": ae_distortion(model, x.to(dev), 1000, generator(seeds[0] + 7, dev)).tolist(),
                     "CIFAR-100 test": ae_distortion(model, x100.to(dev), 1000, generator(seeds[0] + 8, dev)).tolist()}
        st = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return dict(state=st, loss=state["loss"], distortion=dict(before=state["before"], after=after),
                    images=len(x), available=available, cifar100_images=len(x100), seconds=state["seconds"], key=key)

    return ctx.cache.memo(NAME + "-cifar10-ae", key_cfg, fn)


def pretrain_table(pre: dict) -> pd.DataFrame:
    """Distortion of the CIFAR-10 autoencoder before and after pretraining (mean ± sd over seeds)."""
    out = []
    for data_name in ("CIFAR-10", "CIFAR-100 test"):
        for when in ("before", "after"):
            v = np.array(pre["distortion"][when][data_name])
            out.append({"images": data_name, "autoencoder": "random init" if when == "before" else "pretrained",
                        "distortion": round(float(v.mean()), 4),
                        "± sd": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4)})
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------
def _run_key(cfg: dict, split: str, cfgs: list[LifelongConfig], pre_key: str | None) -> dict:
    return dict(split=split, stream=cfg["stream"], seeds=cfg["seeds"], device=cfg["device"],
                configs=[c.to_dict() for c in cfgs], pretrained=pre_key)


def run_results(ctx, progress: bool | None = None) -> dict:
    """``{split: [LifelongResult per row of rows(cfg, split)]}``. Runs that share a network and a
    schedule are fused; each fused run is cached, and checkpointed after every task; the splits run
    in order (the paper's coarse split first)."""
    cfg = config(ctx)
    progress = (not ctx.smoke) if progress is None else progress
    out = {}
    pre = None
    for split in cfg["splits"]:
        rs, cfgs = rows(cfg, split), row_configs(cfg, split)
        res: list = [None] * len(cfgs)
        st = None
        for idx in fuse_groups(cfgs):
            run = [cfgs[i] for i in idx]
            transfer = [rs[i]["transfer"] for i in idx]
            if any(transfer) and pre is None:
                pre = pretrain(ctx, progress)
            pre_key = pre["key"] if any(transfer) else None
            key = _run_key(cfg, split, run, pre_key)
            ck = config_key(NAME, key)

            def fn(run=run, ck=ck, transfer=transfer, split=split):
                nonlocal st
                st = st or stream(cfg, split)
                init = [pre["state"] if t else None for t in transfer] if any(transfer) else None
                with threads(cfg["threads"]):
                    r = run_lifelong(st, run, cfg["seeds"], ctx.device, ae_init=init,
                                     resume=ctx.cache.get_checkpoint(ck), progress=progress,
                                     on_task_end=lambda t, h: ctx.cache.put_checkpoint(ck, h.state_dict()),
                                     desc=f"{split}: " + "+".join(dict.fromkeys(c.method for c in run)))
                return [x.to_dict() for x in r]

            for i, d in zip(idx, ctx.cache.memo(NAME, key, fn)):
                res[i] = LifelongResult.from_dict(d)
        out[split] = res
    return out


def run_rows(ctx) -> pd.DataFrame:
    """One row per (split, method row, seed): ACC (retention), BWT, FWT, LA, task-aware (``_task``)
    and class-incremental (``_class``), with the storage, the paper's numbers and the wall time of
    the fused run the row was part of."""
    cfg = config(ctx)
    out = []
    for split, results in run_results(ctx).items():
        ncls = n_train_classes(stream(cfg, split))
        run_of = {i: k for k, idx in enumerate(fuse_groups(row_configs(cfg, split))) for i in idx}
        for i, (r, res) in enumerate(zip(rows(cfg, split), results)):
            base = {"split": split, "key": r["key"], "row": r["label"], "tables": "+".join(r["tables"]),
                    "method": r["method"], "budget": r["budget"], "paper_budget": r["paper_budget"],
                    "paper3": r["paper3"], "paper4": r["paper4"], "run": f"{split}:{run_of[i]}", "classes": ncls,
                    "items": res.storage["capacity"], "runnable": res.runnable, "reason": res.storage["reason"],
                    "seconds": res.seconds, "fused_with": res.fused_with}
            for rec in res.summary().to_dict("records"):
                out.append(dict(base, **rec))
    return pd.DataFrame(out)


def accuracy_curves(ctx) -> pd.DataFrame:
    """The accuracy matrices as a tidy table: split, row, seed, ``after`` (tasks learned, 0 = random
    init), ``task``, ``task_aware`` and ``class_incremental`` accuracy (%)."""
    cfg = config(ctx)
    out = []
    for split, results in run_results(ctx).items():
        for r, res in zip(rows(cfg, split), results):
            if not res.runnable:
                continue
            out.append(res.curves(split=split, key=r["key"], row=r["label"], method=r["method"],
                                  budget=r["budget"]))
    return pd.concat(out, ignore_index=True)


def training_seconds(df: pd.DataFrame, pre: dict | None = None) -> float:
    """Wall time of all fused runs (each counted once), plus the pretraining if given."""
    t = float(df[df.runnable].drop_duplicates("run").seconds.sum())
    return t + (float(pre["seconds"]) if pre else 0.0)


# ------------------------------------------------------------------------------------------------
# tables and claims
# ------------------------------------------------------------------------------------------------
def _agg(df: pd.DataFrame, col: str) -> pd.DataFrame:
    g = df.groupby(["split", "key"], sort=False)
    out = g.agg(row=("row", "first"), method=("method", "first"), items=("items", "first"),
                paper3=("paper3", "first"), paper4=("paper4", "first"), runnable=("runnable", "first"),
                reason=("reason", "first"), mean=(col, "mean"), sd=(col, "std"), runs=(col, "count"))
    out["sd"] = out["sd"].fillna(0.0)
    return out.reset_index()


def compare_rows(df: pd.DataFrame, table: str, measure: str = "task") -> tuple[list[dict], dict]:
    """Rows for ``report.compare`` of Table ``table`` ("3" or "4") on the retention (``measure`` =
    ``task`` or ``class``), both splits, and the no-verdict reasons."""
    a = _agg(df[df.tables.str.contains(table)], f"ACC_{measure}")
    col = "paper3" if table == "3" else "paper4"
    out, nv = [], {}
    for _, r in a.iterrows():
        ok = bool(r["runnable"])
        p = r[col]
        out.append({"split": r["split"], "row": r["row"], "stored": int(r["items"]),
                    "paper": None if p is None or pd.isna(p) else float(p),
                    "ours": float(r["mean"]) if ok else float("nan"), "sd": float(r["sd"]) if ok else float("nan"),
                    "runs": int(r["runs"]) if ok else 0})
        if not ok:
            nv[(r["split"], r["row"], int(r["items"]))] = f"cannot run ({r['reason']})"
    return out, nv


def online_table(df: pd.DataFrame) -> pd.DataFrame:
    """Our online row (Adam, 1e-3, one example per step) beside the probe's online baseline (plain
    SGD, minibatches of 10, lr 0.1 and 1.0) and the paper's Table 3 online row, per split."""
    out = []
    for split, g in df[df.key == "online"].groupby("split", sort=False):
        out.append({"split": split, "ours (Adam 1e-3, 1 example per step)": round(float(g.ACC_task.mean()), 2),
                    "± sd": round(float(g.ACC_task.std(ddof=1)) if len(g) > 1 else 0.0, 2),
                    "probe: SGD 0.1, batch 10": PROBE_ONLINE.get((split, 0.1)),
                    "probe: SGD 1.0, batch 10": PROBE_ONLINE.get((split, 1.0)),
                    "paper (Table 3)": paper.TABLE3[("online", 0)]})
    return pd.DataFrame(out)


def transfer_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of ACC, BWT, FWT and LA (GEM's definitions, divided by T - 1), task-aware and
    class-incremental, per split and row."""
    cols = [c for c in df.columns if c.split("_")[0] in ("ACC", "BWT", "FWT", "LA")]
    ok = df[df.runnable]
    return ok.groupby(["split", "row"], sort=False)[cols].mean().reset_index()


def _mean(df, split, key, col="ACC_task"):
    sel = df[(df.split == split) & (df.key == key) & df.runnable]
    return float(sel[col].mean()) if len(sel) else float("nan")


def claims(df: pd.DataFrame) -> list[tuple[str, bool, str]]:
    """The qualitative claims of section 5.2's CIFAR-100 paragraphs, on our task-aware retention,
    per split (claims whose rows a split did not run are left out)."""
    out = []
    for split in dict.fromkeys(df.split):
        d = df[(df.split == split) & df.runnable]
        have = set(d.key)
        ncls = int(d.classes.iloc[0])

        def m(key):
            return _mean(df, split, key)

        def n(key):
            return int(d[d.key == key].budget.iloc[0])

        def ev(*pairs):
            return "; ".join(f"{k} {v:.2f}" for k, v in pairs)

        tag = f"[{split}]"
        t3, t4 = paper.TABLE3, paper.TABLE4
        for pb in PAPER_BUDGETS:
            rc, rh = f"recollection-{pb}", f"rehearsal-{pb}"
            if {rc, rh} <= have:
                pv = f"{t3[('recollection', pb)]} vs {t3[('rehearsal', pb)]}"
                out.append((f"{tag} Lossy recollections beat lossless rehearsal at equal incremental storage, "
                            f"{n(rh)} images (paper, {pb} images: {pv})",
                            m(rc) > m(rh), ev(("recollections", m(rc)), ("rehearsal", m(rh)))))
        if {"rehearsal-10", "online"} <= have:
            out.append((f"{tag} Rehearsal with fewer stored examples ({n('rehearsal-10')}) than classes ({ncls}) falls "
                        f"below online learning (paper, 10 of 100: {t3[('rehearsal', 10)]} vs {t3[('online', 0)]})",
                        m("rehearsal-10") < m("online"),
                        ev(("rehearsal", m("rehearsal-10")), ("online", m("online")))))
        if {"rehearsal-200", "online"} <= have:
            out.append((f"{tag} Rehearsal with more stored examples ({n('rehearsal-200')}) than classes ({ncls}) beats "
                        f"online learning (paper, 200 of 100: {t3[('rehearsal', 200)]} vs {t3[('online', 0)]})",
                        m("rehearsal-200") > m("online"),
                        ev(("rehearsal", m("rehearsal-200")), ("online", m("online")))))
        if {"total-transfer", "total-scratch"} <= have:
            out.append((f"{tag} Under the total budget, CIFAR-10 transfer helps the small autoencoder "
                        f"(paper {t4['recollection, CIFAR-10 transfer']} vs {t4['recollection, no transfer']})",
                        m("total-transfer") > m("total-scratch"),
                        ev(("transfer", m("total-transfer")), ("no transfer", m("total-scratch")))))
        if {"total-transfer", "gem-200", "icarl-200"} <= have:
            out.append((f"{tag} With transfer, recollections under the total budget beat GEM and iCaRL with as many "
                        f"memories, run in the same harness (paper {t4['recollection, CIFAR-10 transfer']} vs "
                        f"{t4['GEM']} and {t4['iCaRL']}, quoted from GEM's paper)",
                        m("total-transfer") > max(m("gem-200"), m("icarl-200")),
                        ev(("recollections", m("total-transfer")), ("GEM", m("gem-200")), ("iCaRL", m("icarl-200")))))
    return out


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------
_COLOR = {"online": "k", "rehearsal": "tab:blue", "recollection": "tab:red", "gem": "tab:green",
          "icarl": "tab:purple", "total-scratch": "tab:orange", "total-transfer": "tab:brown"}
_DASH = {10: ":", 50: "--", 200: "-", 0: "-"}


def _style(key: str, method: str, paper_budget: int):
    color = _COLOR.get(key, _COLOR[method])
    return color, _DASH.get(paper_budget, "-")


def _finish(fig, axes):
    """Integer ticks on the task axes; one legend (of the panel with the most rows) right of the last."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    best = max(axes, key=lambda a: len(a.get_legend_handles_labels()[0]))
    h, lab = best.get_legend_handles_labels()
    axes[-1].legend(h, lab, fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()


_SHOW = ("online", "rehearsal-200", "recollection-200", "total-transfer", "gem-200", "icarl-200")


def figure_task_curves(curves: pd.DataFrame, keys=_SHOW, col: str = "task_aware"):
    """Accuracy of each task across the stream: one panel per (split, row), one line per task
    (colour: task index), from the moment the task is learned (mean over seeds)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    splits = list(dict.fromkeys(curves.split))
    shown = [k for k in keys if k in set(curves.key)]
    fig, axes = plt.subplots(len(splits), len(shown), figsize=(2.9 * len(shown), 2.6 * len(splits)),
                             squeeze=False, sharey=True)
    T = int(curves.task.max()) + 1
    cmap = plt.get_cmap("viridis")
    for a, split in enumerate(splits):
        for b, key in enumerate(shown):
            ax = axes[a][b]
            d = curves[(curves.split == split) & (curves.key == key) & (curves.after >= 1)]
            if not len(d):
                ax.set_axis_off()
                continue
            mat = d.groupby(["after", "task"])[col].mean().unstack("task")
            for j in range(T):
                y = mat[j][mat.index >= j + 1]
                ax.plot(y.index, y.values, color=cmap(j / max(T - 1, 1)), lw=1, marker=".", ms=3)
            ax.set_title(f"{split}: {d.row.iloc[0]}", fontsize=7)
            ax.set_xlabel("tasks learned", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if b == 0:
                ax.set_ylabel(f"{col.replace('_', '-')} accuracy (%)", fontsize=8)
    fig.suptitle("Accuracy of every task across the stream (colour: task, dark = first)", fontsize=9)
    fig.tight_layout()
    return fig


def figure_final_per_task(curves: pd.DataFrame, df: pd.DataFrame, col: str = "task_aware"):
    """Final accuracy on every task (after the whole stream; mean over seeds), one line per row,
    one panel per split."""
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(curves.split))
    fig, axes = plt.subplots(1, len(splits), figsize=(6.5 * len(splits), 3.8), squeeze=False, sharey=True)
    last = int(curves.after.max())
    pb = df.drop_duplicates("key").set_index("key").paper_budget
    for ax, split in zip(axes[0], splits):
        d = curves[(curves.split == split) & (curves.after == last)]
        for key, g in d.groupby("key", sort=False):
            y = g.groupby("task")[col].mean()
            color, ls = _style(key, g.method.iloc[0], int(pb[key]))
            ax.plot(y.index + 1, y.values, color=color, ls=ls, marker="o", ms=3, lw=1.2, label=g.row.iloc[0])
        ax.set_title(split, fontsize=9)
        ax.set_xlabel("task")
        ax.set_ylabel(f"final {col.replace('_', '-')} accuracy (%)")
    _finish(fig, list(axes[0]))
    return fig


def figure_average(curves: pd.DataFrame, df: pd.DataFrame, col: str = "task_aware"):
    """Mean accuracy over the tasks learned so far, after each task (mean over seeds), one panel per
    split; hollow circles: the paper's final retention (Table 3, else Table 4) at the last task."""
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(curves.split))
    fig, axes = plt.subplots(1, len(splits), figsize=(6.5 * len(splits), 3.8), squeeze=False, sharey=True)
    info = df.drop_duplicates("key").set_index("key")
    for ax, split in zip(axes[0], splits):
        c = curves[(curves.split == split) & (curves.after >= 1) & (curves.task < curves.after)]
        for key, g in c.groupby("key", sort=False):
            y = g.groupby(["seed", "after"])[col].mean().groupby("after").mean()
            color, ls = _style(key, g.method.iloc[0], int(info.paper_budget[key]))
            ax.plot(y.index, y.values, color=color, ls=ls, lw=1.3, label=g.row.iloc[0])
            p = info.paper3[key] if info.paper3[key] is not None and not pd.isna(info.paper3[key]) else info.paper4[key]
            if p is not None and not pd.isna(p) and col == "task_aware":
                ax.plot([y.index.max()], [p], marker="o", mfc="none", mec=color, ms=8)
        ax.set_title(split, fontsize=9)
        ax.set_xlabel("tasks learned")
        ax.set_ylabel(f"mean {col.replace('_', '-')} accuracy over tasks seen (%)")
    fig.suptitle("Accuracy across the stream (hollow circles: the paper's final retention)", fontsize=9)
    _finish(fig, list(axes[0]))
    return fig

