"""Named experiments, one module per chapter; the only layer that knows what a *profile* is.

* ``smoke``: the CPU regression profile. Real data subsets, small models, few steps; each chapter
  runs in at most 60 s on 2 cores and is deterministic (seeded, 2 threads). nbval re-executes it.
* ``paper``: the paper's settings (epochs, runs, episodes), meant for one GPU.

Both run the same code; only the config differs. Every experiment's result is cached on disk keyed
by its config (``recollect.cache``), so re-rendering never retrains and killed runs resume.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..cache import ResultCache
from ..utils import device_name, pick_device, set_threads

PROFILES = ("smoke", "paper")
SMOKE_THREADS = 2

__all__ = ["PROFILES", "Context", "context", "check_profile"]


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES} "
                         "(smoke: CPU regression run, paper: the paper's settings on a GPU)")
    return profile


@dataclass
class Context:
    """What every experiment needs: profile, seeds, device and the results cache."""
    profile: str
    seeds: list
    device: torch.device
    cache: ResultCache = field(default_factory=ResultCache)

    @property
    def smoke(self) -> bool:
        return self.profile == "smoke"

    def describe(self) -> str:
        return (f"profile={self.profile} seeds={list(self.seeds)} device={device_name(self.device)} "
                f"torch={torch.__version__}")


def context(profile: str = "smoke", seeds=None, device: str = "auto", default_seeds=(0, 1, 2, 3, 4)) -> Context:
    """Build the context of a chapter run. Smoke runs are pinned to the CPU and 2 threads."""
    check_profile(profile)
    if profile == "smoke":
        set_threads(SMOKE_THREADS)
        dev = torch.device("cpu") if device in (None, "auto") else pick_device(device)
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        dev = pick_device(device)
    seeds = list(default_seeds if seeds is None else seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed, e.g. seeds=[0]")
    return Context(profile, seeds, dev)
