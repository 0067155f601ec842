"""Prepare a GPU session: the data to carry, checked on arrival, and the exact device commands.

    python -m recollect stage [--budget 780] [--stage first]

A GPU host starts bare, with no data and no network, and takes at most 64 MiB per call (the working
tree plus what ``carry`` names). This script

* reads the plan (``recollect.queue.todo`` and the estimates) to see which items the session would
  make, and which datasets they read (``Item.data``);
* copies those datasets into ``.stage/1``, ``.stage/2``, ... (git-ignored), one folder per device
  call, with a ``SHA256SUMS`` each: MNIST, Omniglot and CIFAR-10 as they are; CIFAR-100 (168 MB as
  a compressed npz) as lossless WebP images in two parts of about 51 MiB, one per call, so that each
  call also does useful work (the first one makes the MNIST and Omniglot items while the second
  half of CIFAR-100 is still on its way);
* prints the commands to paste into the device tool, one per folder: each copies it to ``$HOME/data``
  (outside the project copy, so it survives until the machine goes back), checks the sha256 sums,
  and runs the queue with the time that call may use.

On the host, ``python3 -m recollect join-data "$HOME/data"`` rebuilds ``cifar100.npz`` from its two
parts and checks every array against the sha256 recorded when the parts were made.
"""
from __future__ import annotations

import hashlib
import io
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np

from . import results as R
from .data import data_dir

__all__ = ["STAGE", "stage_datasets", "split_cifar100", "join_cifar100", "main", "commands"]

STAGE = R.ROOT / ".stage"
#: seconds of one device call the queue may use (a command may run 10 minutes; keep a margin)
CALL_BUDGET = 540
#: device seconds a session loses to starting the machine and the transfers (estimate)
START_COST = 120
#: the side-by-side speed benchmark (issue 17: the README quotes it), run at the start of the first
#: call until its table is in the repository, for at most this many seconds of that call's time
#: (it writes the rows timed so far when its time is up)
BENCH_SECONDS = 120
BENCH_RESULTS = R.ROOT / "bench" / "results.md"
BENCH_COMMAND = "python3 bench/speed.py --steps 100 --out $OUT/bench.md"
WEBP_METHOD = 4


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _array_sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def split_cifar100(src: pathlib.Path, dest: pathlib.Path, cut: int = 30000) -> list[pathlib.Path]:
    """``cifar100.npz`` -> ``cifar100.part1.npz`` (train images 0..cut-1) and ``cifar100.part2.npz``
    (the rest, labels, names), images as lossless WebP bytes (a flat uint8 blob with offsets: no
    pickles). Each part records the sha256 of the original arrays it rebuilds."""
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}

    def encode(images):
        blobs, offsets = [], [0]
        for im in images:
            b = io.BytesIO()
            Image.fromarray(im).save(b, "WEBP", lossless=True, quality=100, method=WEBP_METHOD)
            blobs.append(b.getvalue())
            offsets.append(offsets[-1] + len(blobs[-1]))
        return np.frombuffer(b"".join(blobs), dtype=np.uint8), np.asarray(offsets, dtype=np.int64)

    sha = {k: _array_sha(v) for k, v in arrays.items()}
    b1, o1 = encode(arrays["train_x"][:cut])
    b2, o2 = encode(arrays["train_x"][cut:])
    b3, o3 = encode(arrays["test_x"])
    p1, p2 = dest / "cifar100.part1.npz", dest / "cifar100.part2.npz"
    np.savez(p1, train_a_webp=b1, train_a_offsets=o1)
    rest = {k: v for k, v in arrays.items() if k not in ("train_x", "test_x")}
    np.savez(p2, train_b_webp=b2, train_b_offsets=o2, test_webp=b3, test_offsets=o3,
             sha256=np.asarray(json.dumps(sha)), **rest)
    return [p1, p2]


def join_cifar100(folder: pathlib.Path) -> pathlib.Path:
    """Rebuild ``folder/cifar100.npz`` from its two parts; every array is checked against the sha256
    recorded when the parts were made (a ``ValueError`` says which one differs)."""
    from PIL import Image

    folder = pathlib.Path(folder)
    out = folder / "cifar100.npz"
    p1, p2 = folder / "cifar100.part1.npz", folder / "cifar100.part2.npz"
    missing = [p.name for p in (p1, p2) if not p.exists()]
    if missing:
        raise ValueError(f"cannot rebuild cifar100.npz: {', '.join(missing)} not in {folder}; both parts must "
                         "have arrived (one per device call)")

    def decode(blob, offsets):
        return np.stack([np.asarray(Image.open(io.BytesIO(blob[a:b].tobytes())).convert("RGB"))
                         for a, b in zip(offsets[:-1], offsets[1:])])

    with np.load(p1, allow_pickle=False) as z1, np.load(p2, allow_pickle=False) as z2:
        arrays = {k: z2[k] for k in z2.files if not k.startswith(("train_b_", "test_")) and k != "sha256"}
        arrays["train_x"] = np.concatenate([decode(z1["train_a_webp"], z1["train_a_offsets"]),
                                            decode(z2["train_b_webp"], z2["train_b_offsets"])])
        arrays["test_x"] = decode(z2["test_webp"], z2["test_offsets"])
        for k in ("test_fine", "test_coarse"):
            arrays[k] = z2[k]
        sha = json.loads(str(z2["sha256"]))
    for k, want in sha.items():
        if k not in arrays:
            raise ValueError(f"cifar100 parts: array {k} is missing after the join")
        if _array_sha(arrays[k]) != want:
            raise ValueError(f"cifar100 parts: array {k} differs from the original after the join (sha256)")
    np.savez_compressed(out, **arrays)
    return out


#: what one device call may carry: 64 MiB, the working tree included
CALL_LIMIT = 64 * 2**20


def tree_bytes() -> int:
    """Bytes of the working tree that travels with every call (tracked and untracked, not ignored)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=R.ROOT,
                         capture_output=True, timeout=30).stdout
    return sum((R.ROOT / n.decode()).stat().st_size for n in out.split(b"\0") if n and (R.ROOT / n.decode()).is_file())


def _cifar100_parts(src: pathlib.Path, log) -> list[pathlib.Path]:
    cache = STAGE / "cifar100-webp"
    tag = cache / "source.sha256"
    sha = _sha256(src)
    if not tag.exists() or tag.read_text().strip() != sha:
        log("encoding CIFAR-100 as lossless WebP (once; about 2 minutes on 2 cores)")
        shutil.rmtree(cache, ignore_errors=True)
        split_cifar100(src, cache)
        tag.write_text(sha + "\n")
    return [cache / "cifar100.part1.npz", cache / "cifar100.part2.npz"]


def layout(names, room: int, log=print) -> list[list[pathlib.Path]]:
    """The files each call carries, in order, each call within ``room`` bytes: the small datasets
    first (the calls that make the MNIST and Omniglot items), then CIFAR-100's two parts, each with
    what small data still fits beside it; the CIFAR-100 items run in the call that brings part 2."""
    src = data_dir()
    files = []
    for name in sorted(set(names)):
        f = src / f"{name}.npz"
        if not f.exists():
            raise SystemExit(f"stage: {f} is missing; point RECOLLECT_DATA at the datasets (../shared/data)")
        files.append(f)
    small = sorted((f for f in files if f.stem != "cifar100"), key=lambda f: f.stat().st_size)
    parts = _cifar100_parts(src / "cifar100.npz", log) if any(f.stem == "cifar100" for f in files) else []
    calls: list[list[pathlib.Path]] = []
    # each CIFAR-100 part is a call of its own; small files ride along where they fit, the rest go first
    part_calls = [[p] for p in parts]
    rest = []
    for f in small:
        for c in part_calls[:1]:  # only beside part 1: part 2's call must also rebuild and run
            if sum(x.stat().st_size for x in c) + f.stat().st_size <= room:
                c.append(f)
                break
        else:
            rest.append(f)
    while rest:
        cur, size = [], 0
        for f in list(rest):
            if size + f.stat().st_size <= room:
                cur.append(f)
                size += f.stat().st_size
                rest.remove(f)
        if not cur:
            raise SystemExit(f"stage: {rest[0].name} alone is larger than what one call may carry ({room / 2**20:.1f} MiB)")
        calls.append(cur)
    for c in part_calls:
        if sum(x.stat().st_size for x in c) > room:
            raise SystemExit(f"stage: {c[0].name} ({c[0].stat().st_size / 2**20:.1f} MiB) does not fit beside the "
                             f"working tree in one call ({room / 2**20:.1f} MiB left); make the tree smaller")
    return calls + part_calls


def stage_datasets(names, room: int | None = None, log=print) -> list[list[pathlib.Path]]:
    """Copy the datasets ``names`` into ``.stage/1``, ``.stage/2``, ... (one folder per device call)
    with a ``SHA256SUMS.N`` each; returns the files of each call."""
    if room is None:
        room = CALL_LIMIT - tree_bytes() - 2**20
    for old in STAGE.glob("[0-9]*"):
        shutil.rmtree(old, ignore_errors=True)
    out = []
    for i, files in enumerate(layout(names, room, log), 1):
        d = STAGE / str(i)
        d.mkdir(parents=True)
        for f in files:
            shutil.copy2(f, d / f.name)
        (d / f"SHA256SUMS.{i}").write_text("".join(f"{_sha256(d / f.name)}  {f.name}\n" for f in files))
        out.append([d / f.name for f in files])
    return out


def commands(commit: str, calls: list, budgets: list, chapters_of_call: list, stages, bench: int = 0) -> list[str]:
    """The device commands (at most 2,000 characters each): each copies its folder to $HOME/data
    (outside the project copy, so it lasts while the machine is warm), checks it, rebuilds CIFAR-100
    once both parts are there, and runs the queue for its budget on the chapters whose data are there.
    ``bench`` > 0: the first call runs the speed benchmark for at most that many seconds first
    (:data:`BENCH_COMMAND`; its failure does not stop the queue)."""
    st = " ".join(stages)
    env = f'export RECOLLECT_DATA="$HOME/data" RECOLLECT_COMMIT={commit} PYTHONUNBUFFERED=1'
    out = []
    for i, (files, budget, chapters) in enumerate(zip(calls, budgets, chapters_of_call), 1):
        get = (f'mkdir -p "$HOME/data" && cp -f .stage/{i}/* "$HOME/data/" && '
               f'(cd "$HOME/data" && sha256sum -c --quiet SHA256SUMS.{i})')
        if any(f.name == "cifar100.part2.npz" for f in files):
            get += ' && python3 -m recollect join-data "$HOME/data"'
        q = f"python3 -m recollect gpu-queue --out $OUT --stage {st} --budget {int(budget)}"
        if chapters:
            q += " --chapter " + " ".join(chapters)
        if bench and i == 1:
            q = f"(timeout {int(bench)} {BENCH_COMMAND} || true) && {q}"
        out.append(f"{get} && {env} && {q}")
    return out


def main(budget: float = 780, stages=("first",)) -> int:
    from .queue import COUNTS_FILE, RATES_FILE, _load_json, estimate_seconds, todo

    rates = _load_json(R.results_dir() / RATES_FILE)
    counts = _load_json(R.results_dir() / COUNTS_FILE)
    cands = todo(R.ResultStore(), stages=stages, gpu=True)
    chosen, total = [], 0.0
    for it in cands:
        est, how = estimate_seconds(it, rates, counts)
        chosen.append((it, est))
        total += est or 0.0
    names = sorted({d for it, _ in chosen for d in it.data})
    print(f"{len(chosen)} items are missing or stale at stage {', '.join(stages)}; estimated {total / 60:.1f} "
          f"H200-minutes where estimated (`python -m recollect plan` has the details).")
    for it, est in chosen:
        print(f"  {it.key:48s} {'?' if est is None else f'{est / 60:5.2f}'} min  data: {', '.join(it.data) or '-'}")
    tree = tree_bytes()
    room = CALL_LIMIT - tree - 2**20
    print(f"working tree {tree / 2**20:.1f} MiB: each call may carry {room / 2**20:.1f} MiB of data")
    calls = stage_datasets(names, room)
    # the chapters each call can run: those whose data have arrived by then
    have, chapters_of_call = set(), []
    for files in calls:
        have |= {f.name.split(".")[0] for f in files if not f.name.startswith("cifar100.part1")}
        ok = sorted({it.chapter for it, _ in chosen if set(it.data) <= have})
        chapters_of_call.append(ok)
    work = max(0.0, float(budget) - START_COST)
    n = len(calls)
    # calls that only bring data before the last get a short run; the rest of the time goes to the others
    budgets = []
    for i in range(n):
        share = work / n if n else work
        budgets.append(int(min(CALL_BUDGET, max(60.0, share))))
    for i, (files, chs) in enumerate(zip(calls, chapters_of_call), 1):
        size = sum(p.stat().st_size for p in files) / 2**20
        print(f".stage/{i}: {', '.join(p.name for p in files)} ({size:.1f} MiB); runs: {', '.join(chs) or 'nothing yet'}")
    bench = 0 if BENCH_RESULTS.exists() else BENCH_SECONDS
    if bench and budgets:
        budgets[0] = max(60, budgets[0] - bench)
        print(f"call 1 first runs the speed benchmark for at most {bench} s ({BENCH_COMMAND}; "
              f"{BENCH_RESULTS.relative_to(R.ROOT)} does not exist yet)")
    commit = _commit()
    cmds = commands(commit, calls, budgets, chapters_of_call, stages, bench=bench)
    print("\nDevice commands (device tool `run`; give each a timeout_s about 60 s above its budget, start each "
          "within 30 s of the previous one's return so the machine stays warm):")
    for i, (c, b) in enumerate(zip(cmds, budgets), 1):
        if len(c) > 2000:
            raise SystemExit(f"command {i} is {len(c)} characters, more than the device tool takes")
        print(f"\n# call {i}: carry [\".stage/{i}\"], timeout_s {b + 60 + (bench if i == 1 else 0)}\n{c}")
    print("\nThen, here: python -m recollect unpack <files_at of each call>; commit results/; make paper-book.")
    if bench:
        print(f"And copy call 1's bench.md and bench.json to {BENCH_RESULTS.relative_to(R.ROOT)} and "
              f"{BENCH_RESULTS.with_suffix('.json').relative_to(R.ROOT)}; quote them in the README with unpack's "
              "engine-against-eager lines.")
    return 0


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=R.ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=R.ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if dirty:
        print("warning: the working tree has uncommitted changes; commit first so results name their code",
              file=sys.stderr)
        sha += "+dirty"
    return sha or "unknown"
