"""Paper-versus-reproduction tables with verdicts, claim tables and figure helpers.

A chapter states its tolerance band *before* showing results; ``compare`` then labels each cell
``agrees`` (|ours - paper| <= band), ``close`` (<= 2 band) or ``differs``. Cells the chapter knows
to be unreliable in the paper are labelled ``no verdict`` with the reason.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["verdict", "compare", "claims_table", "mean_spread", "show", "fmt_mean_sd"]


def verdict(paper: float, ours: float, band: float) -> str:
    if paper is None or ours is None or (isinstance(paper, float) and math.isnan(paper)) or math.isnan(ours):
        return "no verdict"
    d = abs(ours - paper)
    return "agrees" if d <= band else ("close" if d <= 2 * band else "differs")


def mean_spread(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Mean, standard deviation (ddof=1; 0 for one run) and run count of ``value`` per ``by``."""
    g = df.groupby(by, sort=False)[value]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def fmt_mean_sd(mean: float, sd: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def compare(rows: list[dict], band: float, digits: int = 2, no_verdict: dict | None = None) -> pd.DataFrame:
    """Rows of ``{<label columns>..., "paper": p, "ours": mean, "sd": spread, "runs": n}`` -> table.

    ``no_verdict`` maps a tuple of the label values to the reason a cell gets no verdict.
    """
    no_verdict = no_verdict or {}
    out = []
    for r in rows:
        labels = {k: v for k, v in r.items() if k not in ("paper", "ours", "sd", "runs")}
        paper, ours = r.get("paper"), r["ours"]
        key = tuple(labels.values())
        rec = dict(labels)
        rec["paper"] = np.nan if paper is None else round(float(paper), digits + 2)
        rec["ours"] = round(float(ours), digits + 2)
        if "sd" in r:
            rec["± sd"] = round(float(r["sd"]), digits + 2)
        if "runs" in r:
            rec["runs"] = int(r["runs"])
        rec["diff"] = np.nan if paper is None else round(float(ours) - float(paper), digits + 2)
        rec["verdict"] = f"no verdict: {no_verdict[key]}" if key in no_verdict else verdict(paper, float(ours), band)
        out.append(rec)
    return pd.DataFrame(out)


def claims_table(claims: list[tuple[str, bool, str]]) -> pd.DataFrame:
    """``[(claim, holds, evidence)]`` -> a table with 'holds' / 'does not hold'."""
    return pd.DataFrame([{"claim": c, "on our numbers": "holds" if h else "does not hold", "evidence": e}
                         for c, h, e in claims])


def show(df: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """A rounded copy of a table for the book. A plain DataFrame (not a Styler, whose HTML carries a
    random id) so that its text and HTML outputs are identical from run to run (nbval)."""
    return df.round(digits).reset_index(drop=True)
