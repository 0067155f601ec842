"""Teacher-student distillation from pools of examples (section 5.1, Tables 1-2, Figure 4).

The students of the paper learn *one example per update*: an episode is one example drawn from a
source and one gradient step on it. The sources (the columns of Tables 1 and 2) differ only in where
the example comes from and which target it carries:

* real training images with their true labels (Real Data) or a random lossless subset of them of
  equal storage (10%, 2%, 1% Sample);
* real images with the teacher's output as target (Real x / Teacher y);
* recollections: codes of a recollection buffer decoded by the generator, labelled by the frozen
  teacher (10x, 50x, 100x Compress);
* code sampling (Figure 4): uniformly random codes decoded and labelled by the teacher, a fresh one
  per episode.

Every source is a :class:`Pool`: uint8 images ``x (N, C, H, W)`` with target probabilities
``targets (N, K)`` (one-hot for true labels). Decoding is deterministic given a code and the teacher
is frozen, so decoding a buffer once and labelling the recollections once gives exactly the examples
that decoding each sampled code on the fly would give.

:func:`train_students` trains ``G`` students of one architecture as the groups of ONE fused model
(``recollect.grouped``): each group has its own pool, seed (initialisation and sampling), learning
rate and sampling rule. Random sampling draws one example per episode; *active sampling* (section
5.1) draws ``k`` candidates, forwards them through the student without gradients and trains on the
one with the highest loss. Students are evaluated at nested checkpoints of one run (e.g. after 10,
100, ..., 100,000 episodes). Nothing here is specific to MNIST: image shape, number of classes,
student architecture and task masks (multi-task students, e.g. Omniglot's 50 alphabets) are
arguments.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..grouped import GroupedAdam, equal_runs, grouped_soft_cross_entropy, stack_groups
from .autoencoder import decode_all
from .capture import CapturedStep, backward_step
from .common import evaluate, host_copy, iterate, predict_proba
from .probe import tick

__all__ = ["Pool", "one_hot_targets", "teacher_targets", "labelled_pool", "teacher_pool", "recollection_pool",
           "code_sampling_pool", "random_codes", "subset_pool", "StudentRun", "train_students",
           "init_students", "hardest", "MASK_FILL"]

#: finite logit given to classes outside an example's task when training task-masked students; a
#: finite value (not -inf) keeps ``0 * log p`` of the soft cross-entropy at 0 instead of NaN
MASK_FILL = -1e9


# --------------------------------------------------------------------------------------------
# pools: where the examples of a student come from
# --------------------------------------------------------------------------------------------
@dataclass
class Pool:
    """A source of examples for a student (one column of Tables 1-2 for one run).

    ``x`` uint8 ``(N, C, H, W)``; ``targets`` float ``(N, K)`` probabilities (one-hot for true
    labels, the teacher's softmax otherwise); ``task`` optional int64 ``(N,)`` for task-masked
    students. ``stream=False``: every episode draws uniformly with replacement from the pool (a
    buffer, a dataset). ``stream=True``: the pool is visited in order, one fresh example per draw
    (code sampling: pre-generated random codes, as many as there are draws); it wraps around if
    exhausted.
    """

    x: torch.Tensor
    targets: torch.Tensor
    task: torch.Tensor | None = None
    stream: bool = False
    name: str = ""

    def __post_init__(self):
        if not isinstance(self.x, torch.Tensor) or self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"Pool.x must be a uint8 tensor (N, C, H, W), got "
                             f"{getattr(self.x, 'dtype', type(self.x).__name__)} {tuple(getattr(self.x, 'shape', ()))}")
        n = self.x.shape[0]
        if n == 0:
            raise ValueError("a pool needs at least one example")
        if (not isinstance(self.targets, torch.Tensor) or not self.targets.is_floating_point()
                or self.targets.dim() != 2 or self.targets.shape[0] != n):
            raise ValueError(f"Pool.targets must be a float tensor (N, K) = ({n}, K) of probabilities, got "
                             f"{getattr(self.targets, 'dtype', type(self.targets).__name__)} "
                             f"{tuple(getattr(self.targets, 'shape', ()))}; use one_hot_targets(y, K) for labels")
        if self.task is not None and (self.task.dtype != torch.int64 or tuple(self.task.shape) != (n,)):
            raise ValueError(f"Pool.task must be None or int64 ({n},), got {self.task.dtype} {tuple(self.task.shape)}")

    def __len__(self):
        return self.x.shape[0]

    @property
    def n_classes(self) -> int:
        return self.targets.shape[1]


def one_hot_targets(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """True labels ``(N,)`` as target probabilities ``(N, K)`` (so one loss serves every pool)."""
    if y.dtype != torch.int64 or y.dim() != 1:
        raise ValueError(f"labels must be int64 (N,), got {y.dtype} {tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got [{int(y.min())}, {int(y.max())}]")
    return F.one_hot(y, n_classes).float()


@torch.no_grad()
def teacher_targets(teacher: nn.Module, x: torch.Tensor, batch_size: int = 1000, task=None,
                    class_mask=None) -> torch.Tensor:
    """The frozen teacher's softmax outputs ``(N, K)`` for images ``x (N, C, H, W)`` (a G = 1 model).

    With ``task`` and ``class_mask`` the teacher's outputs are restricted to each example's task
    (classes outside it get probability 0). Returned on the CPU.
    """
    if teacher.groups != 1:
        raise ValueError(f"the teacher must be a single model (groups=1), got groups={teacher.groups}")
    return predict_proba(teacher, x, batch_size, task, class_mask)[0].cpu()


def labelled_pool(x, y, n_classes: int, task=None, name: str = "") -> Pool:
    """Real (or sampled) images with their true labels as one-hot targets."""
    return Pool(x, one_hot_targets(y, n_classes), task, False, name)


def teacher_pool(x, teacher, task=None, class_mask=None, batch_size: int = 1000, name: str = "") -> Pool:
    """Images labelled by the frozen teacher (Real x / Teacher y)."""
    return Pool(x, teacher_targets(teacher, x, batch_size, task, class_mask), task, False, name)


def subset_pool(pool: Pool, n: int, generator: torch.Generator, name: str = "") -> Pool:
    """A uniformly random subset of ``n`` examples of ``pool`` (a lossless sample of fixed storage)."""
    if not 1 <= n <= len(pool):
        raise ValueError(f"a subset needs 1 <= n <= {len(pool)}, got n={n}")
    idx = torch.randperm(len(pool), generator=generator)[:n].sort().values.to(pool.x.device)
    task = None if pool.task is None else pool.task[idx]
    return Pool(pool.x[idx], pool.targets[idx.to(pool.targets.device)], task, False, name)


@torch.no_grad()
def recollection_pool(vae: nn.Module, codes: torch.Tensor, teacher: nn.Module, task=None, class_mask=None,
                      batch_size: int = 1000, name: str = "") -> Pool:
    """Recollections of buffer ``codes`` ``(N, c)`` (or ``(1, N, c)``), labelled by the frozen teacher.

    Decoding is deterministic given a code (``CategoricalVAE.decode``) and the teacher is frozen, so
    decoding the buffer once here is equivalent to decoding every sampled code on the fly.
    """
    if codes.dim() == 2:
        codes = codes.unsqueeze(0)
    if codes.dim() != 3 or codes.shape[0] != 1:
        raise ValueError(f"codes must be (N, c) or (1, N, c), got {tuple(codes.shape)}")
    dev = next(vae.parameters()).device
    x = decode_all(vae, codes.to(dev), batch_size)[0].cpu()
    return teacher_pool(x, teacher, task, class_mask, batch_size, name)


def random_codes(n: int, c: int, l: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` codes of ``c`` variables drawn uniformly from ``l`` categories each: int64 ``(n, c)``.

    The code-sampling baseline of Figure 4 (appendix A.2: each discrete latent variable an
    independent uniform random integer).
    """
    return torch.randint(0, l, (n, c), generator=generator)


@torch.no_grad()
def code_sampling_pool(vae: nn.Module, teacher: nn.Module, n: int, generator: torch.Generator,
                       chunk: int = 10000, batch_size: int = 1000, name: str = "") -> Pool:
    """``n`` fresh random codes decoded and labelled by the teacher, generated in chunks (Figure 4).

    Pre-generate as many as there are draws (episodes times candidates): the pool is streamed
    (``stream=True``), so every episode sees a code of its own, as if drawn on the fly.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    dev = next(vae.parameters()).device
    xs, ts = [], []
    for sl in iterate(n, chunk):
        codes = random_codes(sl.stop - sl.start, vae.c, vae.l, generator)
        x = decode_all(vae, codes.unsqueeze(0).to(dev), batch_size)[0]
        xs.append(x.cpu())
        ts.append(teacher_targets(teacher, x, batch_size))
    return Pool(torch.cat(xs), torch.cat(ts), None, True, name)


# --------------------------------------------------------------------------------------------
# training many students together
# --------------------------------------------------------------------------------------------
@dataclass
class StudentRun:
    """Result of :func:`train_students`: ``accuracy[i, s, g]`` = accuracy (%) of group ``g`` on eval
    set ``sets[s]`` after ``checkpoints[i]`` episodes. ``complete`` is False when the run stopped
    at ``max_seconds`` (its state was handed to ``on_checkpoint``; call again with it to resume)."""

    checkpoints: list
    sets: list
    accuracy: torch.Tensor
    episodes_done: int
    seconds: float
    complete: bool = True
    model: nn.Module | None = field(default=None, repr=False)
    chosen: torch.Tensor | None = field(default=None, repr=False)


def init_students(model_factory, seeds) -> nn.Module:
    """One fused model whose group ``g`` is ``model_factory(1)`` initialised under seed ``seeds[g]``.

    A group's initial weights depend on its own seed only (not on which other groups are fused), so
    a student trained among others is the same student as one trained alone.
    """
    singles = []
    for s in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(s))
            singles.append(model_factory(1))
    return singles[0] if len(singles) == 1 else stack_groups(singles)


def _sampler_generator(seed: int) -> torch.Generator:
    # distinct from the initialisation stream (torch.manual_seed(seed)), same for every pool
    return torch.Generator().manual_seed(int(seed) * 2654435761 % (2 ** 63) + 1)


def _optimizer_state(d: dict, opt, lrs: list) -> dict:
    """The saved optimizer state of a student run, checked against the run's learning rates."""
    saved = torch.as_tensor(d["param_groups"][0]["lr"], dtype=torch.float64).flatten().tolist()
    if len(saved) == 1:
        saved = saved * len(lrs)
    if saved != list(lrs) or len(d["state"]) > len(opt.param_groups[0]["params"]):
        raise ValueError("optimizer state belongs to another run (learning rates or parameters differ); "
                         "start without `state` or pass the state of this run")
    return d


def _as_list(v, g: int, name: str, cast):
    if isinstance(v, (list, tuple)) or (isinstance(v, torch.Tensor) and v.dim() > 0):
        v = [cast(x) for x in (v.tolist() if isinstance(v, torch.Tensor) else v)]
        if len(v) != g:
            raise ValueError(f"{name} must hold one value per group ({g}), got {len(v)}")
        return v
    return [cast(v)] * g


def _soft_loss(logits, targets, task=None, class_mask=None, reduction="mean"):
    """Cross-entropy against target probabilities, (G, B) -> (G,); task-masked when a mask is given."""
    if class_mask is not None:
        keep = class_mask[task]  # (G, B, K)
        logits = logits.masked_fill(~keep, MASK_FILL)
    return grouped_soft_cross_entropy(logits.float(), targets, reduction=reduction)


@torch.no_grad()
def hardest(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, task=None, class_mask=None) -> torch.Tensor:
    """Active sampling's choice (section 5.1): candidates ``x (G, B, k, C, H, W)`` with targets
    ``(G, B, k, K)`` -> index ``(G, B)`` of the candidate with the highest loss under ``model`` (a
    grouped model of G groups), scored without gradients in evaluation mode."""
    g, b, k = x.shape[:3]
    was = model.training
    model.eval()
    out = model(x.reshape(g, b * k, *x.shape[3:]))
    model.train(was)
    t = None if task is None else task.reshape(g, b * k)
    loss = _soft_loss(out, targets.reshape(g, b * k, -1), t, class_mask, reduction="none")
    return loss.view(g, b, k).argmax(-1)


def train_students(model_factory, pools, seeds, lrs, checkpoints, eval_sets: dict, active_k=1,
                   batch_size: int = 1, class_mask=None, device="cpu", chunk: int = 1000,
                   checkpoint_every: int | None = None, state: dict | None = None, on_checkpoint=None,
                   max_seconds: float | None = None, eval_batch_size: int | None = None,
                   progress: bool = False, desc: str = "students", return_model: bool = False,
                   record: bool = False, *, cuda_graph: bool = True, amp_dtype=None) -> StudentRun:
    """Train ``G = len(pools)`` students as the groups of one fused model (section 5.1).

    ``model_factory(groups)`` builds the grouped student (e.g. ``lambda g: LeNet(10, (1, 28, 28), g)``);
    ``pools[g]`` is group g's :class:`Pool` (pools shared by several groups are stored once);
    ``seeds[g]`` fixes group g's initialisation and its draws; ``lrs`` is one learning rate or one
    per group (Adam); ``active_k`` is 1 (random sampling) or k > 1 (active sampling: k candidates per
    example, the one with the highest loss under the current student is trained on), one value or
    one per group. One step trains every group on ``batch_size`` examples (the paper: 1, so an
    episode is one example and one update). ``checkpoints`` are episode counts (multiples of
    ``batch_size``) at which every group is evaluated on every ``eval_sets[name] = (x, y)`` or
    ``(x, y, task)``; the run ends at the last one.

    ``class_mask`` (T, K) bool makes students task-aware (pools and eval sets then carry tasks).
    Resuming: ``on_checkpoint(state_fn)`` is called every ``checkpoint_every`` episodes (a multiple of
    ``chunk * batch_size``) with a function returning the CPU state dict (called only when the caller
    saves: a checkpoint mechanism by time skips most offers); passing that state back as ``state``
    continues the run exactly. ``max_seconds`` stops after the first such checkpoint past that wall time (the result
    then has ``complete=False``). ``record=True`` keeps the pool index every group trained on at every
    step (``StudentRun.chosen``, (steps, G, B); for tests and diagnostics).

    Speed: every step (the active choice included) is one :class:`~recollect.train.capture.CapturedStep`
    whose input is the step's candidate indices: on CUDA with ``cuda_graph=True`` a replayed CUDA
    graph with no host synchronisation; the draws are made on the CPU, ``chunk`` steps at a time,
    so they stay exactly the seeded draws described above. ``amp_dtype`` (e.g. ``torch.bfloat16``)
    runs the forward passes under autocast; on the CPU with the defaults the arithmetic is the
    plain eager loop's.
    """
    t0 = time.perf_counter()
    dev = torch.device(device)
    G = len(pools)
    if G == 0:
        raise ValueError("train_students needs at least one pool (one per group)")
    pools = [p if isinstance(p, Pool) else Pool(*p) for p in pools]
    seeds = _as_list(seeds, G, "seeds", int)
    lrs = _as_list(lrs, G, "lrs", float)
    ks = _as_list(active_k, G, "active_k", int)
    if min(ks) < 1:
        raise ValueError(f"active_k must be >= 1 (1 = random sampling), got {min(ks)}")
    checkpoints = sorted(int(c) for c in checkpoints)
    if not checkpoints or checkpoints[0] < 1 or any(c % batch_size for c in checkpoints):
        raise ValueError(f"checkpoints must be positive episode counts, multiples of batch_size={batch_size}; "
                         f"got {checkpoints}")
    if checkpoint_every is not None and checkpoint_every % (chunk * batch_size):
        raise ValueError(f"checkpoint_every ({checkpoint_every}) must be a multiple of chunk * batch_size "
                         f"({chunk * batch_size})")
    K = pools[0].n_classes
    shape = tuple(pools[0].x.shape[1:])
    for p in pools:
        if p.n_classes != K or tuple(p.x.shape[1:]) != shape:
            raise ValueError(f"all pools need the same image shape and classes: {shape}, {K} vs "
                             f"{tuple(p.x.shape[1:])}, {p.n_classes}")
        if class_mask is not None and p.task is None:
            raise ValueError("with class_mask, every pool needs task indices (Pool.task)")
    mask = None if class_mask is None else class_mask.to(dev)
    eval_sets = {k: tuple(v) for k, v in eval_sets.items()}

    # stack the distinct pools once; group g reads rows offset[g] .. offset[g] + size[g] - 1
    uniq, which = [], []
    for p in pools:
        for i, q in enumerate(uniq):
            if q is p:
                which.append(i)
                break
        else:
            which.append(len(uniq))
            uniq.append(p)
    sizes = [len(p) for p in uniq]
    starts = [0]
    for n in sizes[:-1]:
        starts.append(starts[-1] + n)
    X = torch.cat([p.x for p in uniq]).to(dev) if len(uniq) > 1 else uniq[0].x.to(dev)
    T = torch.cat([p.targets.float() for p in uniq]).to(dev) if len(uniq) > 1 else uniq[0].targets.float().to(dev)
    TASK = None
    if mask is not None:
        TASK = torch.cat([p.task for p in uniq]).to(dev)
    offset = torch.tensor([starts[i] for i in which], device=dev).view(G, 1, 1)
    size = [sizes[i] for i in which]
    stream = [uniq[i].stream for i in which]

    model = init_students(model_factory, seeds).to(dev)
    if model.groups != G:
        raise ValueError(f"model_factory(1) must build a single model; fused {model.groups} groups for {G} pools")
    opt = GroupedAdam(model.parameters(), lr=torch.tensor(lrs, dtype=torch.float64))
    gens = [_sampler_generator(s) for s in seeds]
    kmax = max(ks)
    active_runs = [(a, b, k) for a, b, k in equal_runs(ks) if k > 1]
    names = list(eval_sets)
    acc = torch.full((len(checkpoints), len(names), G), float("nan"))
    step = 0
    if state is not None:
        if state.get("groups") != G or state.get("checkpoints") != checkpoints:
            raise ValueError("the saved state belongs to another run (groups or checkpoints differ)")
        model.load_state_dict(state["model"])
        opt.load_state_dict(_optimizer_state(state["optimizer"], opt, lrs))
        for g, s in zip(gens, state["generators"]):
            g.set_state(s)
        acc = state["accuracy"].clone()
        step = int(state["step"])
    total_steps = checkpoints[-1] // batch_size
    ev_bs = eval_batch_size or max(8, 16384 // G)

    def get_state():
        return {"groups": G, "checkpoints": checkpoints, "step": step,
                "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "optimizer": host_copy(opt.state_dict()), "generators": [g.get_state() for g in gens],
                "accuracy": acc.clone()}

    def draws(t0_, n):
        """Local pool indices (G, n, B, kmax) for steps t0_ .. t0_ + n - 1."""
        out = torch.empty(G, n, batch_size, kmax, dtype=torch.int64)
        for g in range(G):
            if stream[g]:
                k = ks[g]
                pos = torch.arange(t0_ * batch_size * k, (t0_ + n) * batch_size * k).view(n, batch_size, k)
                out[g, :, :, :k] = pos % size[g]
                out[g, :, :, k:] = out[g, :, :, :1]
            else:
                u = torch.rand((n, batch_size, kmax), generator=gens[g], dtype=torch.float64)
                out[g] = (u * size[g]).long().clamp_(max=size[g] - 1)
        return out.to(dev)

    def evaluate_all(i):
        was = model.training
        for s, name in enumerate(names):
            ev = eval_sets[name]
            task = ev[2] if len(ev) > 2 else None
            acc[i, s] = evaluate(model, ev[0], ev[1], ev_bs, task, mask).cpu()
        model.train(was)

    # one step, as one CapturedStep: the active choice (student forward on the k candidates without
    # gradients, argmax of the loss, gather), then forward, backward and Adam on the chosen examples.
    # Its input is the step's candidate rows (G, B, kmax); it returns the chosen rows (G, B).
    with torch.no_grad():
        active = [(a, b, k, {**{n_: p.detach()[a:b] for n_, p in model.named_parameters()},
                             **{n_: v[a:b] for n_, v in model.named_buffers()}}) for a, b, k in active_runs]

    def student_step(cand):
        chosen = cand[:, :, 0].clone()  # random sampling: the first draw
        if active:
            model.eval()
            with torch.no_grad():
                for a, b, k, sub in active:
                    ci = cand[a:b, :, :k].reshape(b - a, -1)  # (A, B*k)
                    out = torch.func.functional_call(model, sub, (X[ci],))  # (A, B*k, K)
                    ct = None if TASK is None else TASK[ci]
                    loss = _soft_loss(out, T[ci], ct, mask, reduction="none").view(b - a, batch_size, k)
                    best = loss.argmax(-1, keepdim=True)  # (A, B, 1)
                    chosen[a:b] = cand[a:b, :, :k].gather(2, best).squeeze(-1)
            model.train()
        logits = model(X[chosen])  # (G, B, K)
        loss = _soft_loss(logits, T[chosen], None if TASK is None else TASK[chosen], mask)
        backward_step(loss, opt)
        return chosen

    run_step = CapturedStep(student_step, cuda_graph=cuda_graph, amp_dtype=amp_dtype, optimizers=[opt], device=dev,
                            name=desc)
    trace = []
    bar = tqdm(total=total_steps, initial=step, desc=desc, disable=not progress, leave=False, mininterval=2)
    model.train()
    complete = True
    while step < total_steps:
        n = min(chunk - step % chunk, total_steps - step)
        idx = draws(step, n) + offset.unsqueeze(-1)  # (G, n, B, kmax) global rows
        for j in range(n):
            tick("students")
            chosen = run_step(idx[:, j])
            if record:
                trace.append(chosen - offset[:, :, 0])  # on the device: no sync per step
            step += 1
            episodes = step * batch_size
            if episodes in checkpoints:
                evaluate_all(checkpoints.index(episodes))
        bar.update(n)
        if checkpoint_every and (step * batch_size) % checkpoint_every == 0 and step < total_steps:
            if on_checkpoint is not None:
                on_checkpoint(get_state)
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                complete = False
                break
    bar.close()
    return StudentRun(checkpoints, names, acc, step * batch_size, time.perf_counter() - t0, complete,
                      model if return_model else None, torch.stack(trace).cpu() if trace else None)
