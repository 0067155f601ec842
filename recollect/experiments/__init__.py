"""Named experiments, one module per chapter; the only layer that knows what a *profile* is.

* ``smoke``: the CPU regression profile. Real data subsets, small models, few steps; each chapter
  runs in at most 60 s on 2 cores and gives bit-identical checked outputs on any x86-64 CPU (seeded,
  portable arithmetic: ``recollect.portable``). nbval re-executes it.
* ``paper``: the paper's settings (epochs, runs, episodes), meant for one GPU.

Both run the same code; only the config differs. Every experiment's result is cached on disk keyed
by its config (``recollect.cache``), so re-rendering never retrains and killed runs resume.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field

import torch

from .. import portable
from ..utils import device_name, pick_device

PROFILES = ("smoke", "paper")
SMOKE_THREADS = portable.THREADS

__all__ = ["PROFILES", "Context", "context", "check_profile"]


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES} "
                         "(smoke: CPU regression run, paper: the paper's settings on a GPU)")
    return profile


@dataclass
class Context:
    """What every experiment needs: profile, seeds and device; what it used (``seen``)."""
    profile: str
    seeds: list
    device: torch.device
    started: float = field(default_factory=time.time)
    #: the seeds the notebook asked for (None: every item's own seeds)
    seeds_given: tuple | None = None
    #: item key -> the Result (or Missing) this execution used, for the status and the provenance
    seen: dict = field(default_factory=dict)

    @property
    def smoke(self) -> bool:
        return self.profile == "smoke"

    def describe(self) -> str:
        seeds = list(self.seeds_given) if self.seeds_given else "each item's own (settings table)"
        return (f"profile={self.profile} seeds={seeds} device={device_name(self.device)} "
                f"torch={torch.__version__}")

    def check_results(self, chapter: str) -> str:
        """One checked line: at smoke, whether the smoke runs reproduce the committed fingerprints (the
        versions of the paper results); at paper, how many results were current."""
        from .items import verify_versions

        if self.smoke:
            return verify_versions(chapter)
        used = [k for k in self.seen if k.startswith(chapter + "/")]
        ok = [k for k in used if hasattr(self.seen[k], "payload")]
        return f"paper results used: {len(ok)} of {len(used)} items this chapter asked for were current"

    def trained_seconds(self) -> float:
        """Training time of the results this execution used (from their provenance)."""
        return sum(float(r.provenance.get("seconds", 0.0)) for r in self.seen.values() if hasattr(r, "provenance"))

    def provenance(self, chapter: str, trained_seconds: float | None = None, notes: tuple = ()) -> None:
        """Print how this execution's numbers were made (every chapter's last cell): profile, device,
        versions, the CPU arithmetic settings, times and the command that re-executes the chapter."""
        if trained_seconds is None and self.seen:
            trained_seconds = self.trained_seconds()
        print(self.describe())
        arith = ", ".join(f"{k} {v}" for k, v in portable.settings().items())
        kind = "portable settings of recollect/portable.env" if self.smoke else "as the machine chose"
        print(f"CPU arithmetic ({kind}): {arith}")
        print(f"wall time of this execution: {time.time() - self.started:.0f} s")
        if trained_seconds is not None:
            print(f"training time recorded with the results: {trained_seconds:.0f} s")
        print(f"torch {torch.__version__}, python {platform.python_version()}")
        made = [r for k, r in self.seen.items() if k.startswith(chapter + "/") and hasattr(r, "provenance")]
        if made and not self.smoke:
            print("where each result used here was made (from its provenance in results/):")
            for r in sorted(made, key=lambda r: r.item):
                pv = r.provenance
                print(f"  {r.item}: {pv.get('device', '?')}, {str(pv.get('date', ''))[:10]}, "
                      f"{float(pv.get('seconds', 0.0)):.0f} s, commit {pv.get('commit', '?')}, torch {pv.get('torch', '?')}"
                      + (" (stale)" if getattr(r, "stale", False) else ""))
            if any(str(r.provenance.get("commit", "")).endswith("+dirty") for r in made):
                print("  (a commit marked +dirty: the result was made from that commit with changes not yet "
                      "committed; unless marked stale, the smoke fingerprint it carries is the one this book's "
                      "code gives)")
        for line in notes:
            print(line)
        if self.smoke:
            print(f"re-execute this smoke run: python -m recollect run {chapter} --profile smoke")
        print(f"re-execute at the paper's settings: python -m recollect run {chapter} --profile paper")


def context(profile: str = "smoke", seeds=None, device: str = "auto", default_seeds=(0, 1, 2, 3, 4)) -> Context:
    """Build the context of a chapter run. Smoke runs are pinned to the CPU and to portable arithmetic
    (``recollect.portable.enforce``: a clear error when the environment does not fix it)."""
    check_profile(profile)
    if profile == "smoke":
        portable.enforce()
        dev = torch.device("cpu") if device in (None, "auto") else pick_device(device)
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        dev = pick_device(device)
    given = None if seeds is None else tuple(int(s) for s in seeds)
    seeds = list(default_seeds if seeds is None else seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed, e.g. seeds=[0]")
    return Context(profile, seeds, dev, seeds_given=given)
