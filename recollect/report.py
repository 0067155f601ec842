"""Paper-versus-reproduction tables with verdicts, claim tables and figure helpers.

A chapter states its tolerance band *before* showing results; ``compare`` then labels each cell
``agrees`` (|ours - paper| <= band), ``close`` (<= 2 band) or ``differs``. Cells the chapter knows
to be unreliable in the paper are labelled ``no verdict`` with the reason.

The book shows every table through ``table`` (no index column, the paper's digits, coloured verdicts,
long tables folded) and opens every chapter with ``status_banner`` (which profile the stored outputs
come from and what that means for the verdicts). Both return objects whose HTML and plain text are
identical from run to run, as nbval requires.
"""
from __future__ import annotations

import hashlib
import html as _html
import math
import re
import textwrap
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .experiments.items import needs_results

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


@needs_results
def compare(rows: list[dict], band: float, digits: int = 2, no_verdict: dict | None = None) -> pd.DataFrame:
    """Rows of ``{<label columns>..., "paper": p, "ours": mean, "sd": spread, "runs": n}`` -> table.

    ``no_verdict`` maps a tuple of the label values to the reason a cell gets no verdict. A row of one
    run has no spread to show: its ``± sd`` is empty (shown as a dash), not 0.
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
            one = "runs" in r and int(r["runs"]) == 1
            rec["± sd"] = np.nan if one else round(float(r["sd"]), digits + 2)
        if "runs" in r:
            rec["runs"] = int(r["runs"])
        rec["diff"] = np.nan if paper is None else round(float(ours) - float(paper), digits + 2)
        rec["verdict"] = f"no verdict: {no_verdict[key]}" if key in no_verdict else verdict(paper, float(ours), band)
        out.append(rec)
    return pd.DataFrame(out)


@needs_results
def claims_table(claims: list[tuple[str, bool, str]]) -> pd.DataFrame:
    """``[(claim, holds, evidence)]`` -> a table with 'holds' / 'does not hold'."""
    return pd.DataFrame([{"claim": c, "on our numbers": "holds" if h else "does not hold", "evidence": e}
                         for c, h, e in claims])


@needs_results
def show(df: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """A rounded copy of a table for the book. A plain DataFrame (not a Styler, whose HTML carries a
    random id) so that its text and HTML outputs are identical from run to run (nbval)."""
    return df.round(digits).reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# The book's tables and status banners: HTML for the book, a deterministic plain text for nbval.
# --------------------------------------------------------------------------------------------------
__all__ += ["VERDICT_COLORS", "VERDICT_COLUMNS", "Table", "table", "ChapterState", "StatusBanner", "status",
            "status_banner"]

#: background and text colour of a verdict cell, by the verdict's first word(s); readable in the
#: theme's light and dark modes (the text colour is set with the background)
VERDICT_COLORS = {
    "agrees": ("#d1e7dd", "#0f5132"),          # green
    "holds": ("#d1e7dd", "#0f5132"),
    "close": ("#fff3cd", "#664d03"),           # amber
    "differs": ("#f8d7da", "#842029"),         # red
    "does not hold": ("#f8d7da", "#842029"),
    "no verdict": ("#e2e3e5", "#41464b"),      # grey
}
#: the columns ``table`` colours by default: ``compare``'s verdict and ``claims_table``'s outcome
VERDICT_COLUMNS = ("verdict", "on our numbers")
#: what a missing number shows (a paper cell the paper does not print, say)
MISSING = "–"
_EMPTY_STYLE = re.compile(r'<style type="text/css">\s*</style>\s*')


def _verdict_class(text: str) -> str | None:
    t = str(text).strip().lower()
    for key in sorted(VERDICT_COLORS, key=len, reverse=True):  # "does not hold" before "holds"
        if t == key or t.startswith(key + ":") or t.startswith(key + " "):
            return "rc-" + key.replace(" ", "-")
    return None


def _fmt_cell(v, digits: int, signed: bool) -> str:
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)) or v is pd.NA or v is pd.NaT:
        return MISSING
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):+d}" if signed else str(int(v))
    if isinstance(v, (float, np.floating)):
        s = f"{float(v):+.{digits}f}" if signed else f"{float(v):.{digits}f}"
        if s.lstrip("+-").strip("0.") == "":  # -0.00 / +0.00 -> 0.00
            s = f"{0.0:.{digits}f}"
        return s
    return str(v)


@dataclass(frozen=True)
class Table:
    """A table as the book shows it: ``_repr_html_`` gives the styled HTML (no index column, fixed
    table id, coloured verdicts, long tables folded) and ``repr`` the same formatted cells as plain
    text, so both outputs are identical from run to run (nbval compares them).

    ``data`` holds the formatted cells (strings), ``numbers`` the table before formatting.
    """
    data: pd.DataFrame
    numbers: pd.DataFrame
    table_id: str
    caption: str | None = None
    fold_after: int | None = None
    verdict_cols: tuple = ()
    numeric_cols: tuple = ()

    def __repr__(self) -> str:
        cols = [str(c) for c in self.data.columns]
        if not len(self.data):
            text = "(no rows) " + " | ".join(cols)
        else:  # numbers right-aligned, text left-aligned, two spaces between columns
            values = [[str(v) for v in self.data[c]] for c in self.data.columns]
            widths = [max(len(h), *map(len, vs)) for h, vs in zip(cols, values)]
            right = [c in self.numeric_cols for c in self.data.columns]

            def line(items):
                return "  ".join(v.rjust(w) if r else v.ljust(w)
                                 for v, w, r in zip(items, widths, right)).rstrip()
            text = "\n".join([line(cols)] + [line(row) for row in zip(*values)])
        return f"{self.caption}\n{text}" if self.caption else text

    __str__ = __repr__

    def _css(self) -> str:
        """One style block for the table(s) of this id, scoped to its wrapper, only the rules used."""
        sc = f"#{self.table_id}"
        rules = [
            f"{sc} table {{border-collapse: collapse; margin: 0.3em 0 0.8em 0; font-size: 0.9em;}}",
            f"{sc} caption {{caption-side: top; text-align: left; font-weight: 600; padding: 0.2em 0;}}",
            f"{sc} th {{text-align: left; padding: 0.3em 0.6em; "
            f"border-bottom: 2px solid var(--pst-color-border, #ccc);}}",
            f"{sc} td {{text-align: left; padding: 0.25em 0.6em; vertical-align: top; "
            f"border-bottom: 1px solid var(--pst-color-border, #e5e5e5);}}",
            f"{sc} td.rc-num {{text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums;}}",
            f"{sc} details > summary {{cursor: pointer; margin: 0.2em 0 0.4em 0;}}",
        ]
        for i, c in enumerate(self.data.columns):
            if c in self.numeric_cols:
                rules.append(f"{sc} th.col{i} {{text-align: right;}}")
        used = {_verdict_class(v) for c in self.verdict_cols for v in self.data[c]} - {None}
        for key, (bg, fg) in VERDICT_COLORS.items():
            cls = "rc-" + key.replace(" ", "-")
            if cls in used:
                rules.append(f"{sc} td.{cls} {{background-color: {bg}; color: {fg};}}")
        return "<style>\n" + "\n".join(rules) + "\n</style>\n"

    def _styled(self, rows: pd.DataFrame, uid: str, caption: str | None) -> str:
        from pandas.io.formats.style import Styler
        classes = pd.DataFrame("", index=rows.index, columns=rows.columns)
        for c in self.numeric_cols:
            classes[c] = "rc-num"
        for c in self.verdict_cols:
            classes[c] = [(_verdict_class(v) or "") for v in rows[c]]
        st = Styler(rows, uuid=uid, cell_ids=False).hide(axis="index")
        st = st.format(escape="html").format_index(escape="html", axis=1).set_td_classes(classes)
        if caption:
            st = st.set_caption(_html.escape(caption))
        return _EMPTY_STYLE.sub("", st.to_html())

    def to_html(self) -> str:
        n = len(self.data)
        out = [f'<div class="rc-table" id="{self.table_id}">\n', self._css()]
        if not self.fold_after or n <= self.fold_after:
            out.append(self._styled(self.data, self.table_id + "_t", self.caption))
        else:
            out.append(self._styled(self.data.iloc[:self.fold_after], self.table_id + "_t", self.caption))
            out.append(f"<details><summary>show the other {n - self.fold_after} of {n} rows</summary>\n")
            out.append(self._styled(self.data.iloc[self.fold_after:], self.table_id + "_more", None))
            out.append("</details>\n")
        out.append("</div>\n")
        return "".join(out)

    def _repr_html_(self) -> str:
        return self.to_html()


@needs_results
def table(df: pd.DataFrame, digits: int | Mapping[str, int] = 2,
          verdict_col: str | Sequence[str] | None = VERDICT_COLUMNS, fold_after: int | None = None,
          caption: str | None = None, signed: Sequence[str] = ("diff",), table_id: str | None = None) -> Table:
    """The one way a chapter shows a table.

    * no index column (a meaningful index, named or multi-level, becomes ordinary columns);
    * floats at ``digits`` decimals, or per column with a dict (``{"paper": 1, "ours": 1}``; float
      columns it does not name get 2); integers as integers; a missing number shows ``–``; the
      ``signed`` columns (the difference) carry their sign;
    * the cells of the ``verdict_col`` column(s) coloured: agrees / holds green, close amber,
      differs / does not hold red, no verdict grey (columns not in ``df`` are ignored);
    * more than ``fold_after`` rows: the rest folded in an HTML ``<details>`` (the plain text keeps
      every row);
    * the HTML table id is ``table_id`` or one derived from the content, so it is the same on every
      run and differs between the tables of a page.
    """
    if isinstance(df, pd.Series):
        df = df.to_frame()
    if not (isinstance(df.index, pd.RangeIndex) and df.index.name is None):
        df = df.reset_index()
    df = df.reset_index(drop=True)
    if isinstance(df.columns, pd.MultiIndex):
        df.columns = [" ".join(str(x) for x in c if str(x)) for c in df.columns]
    df.columns = [str(c) for c in df.columns]
    if df.columns.duplicated().any():
        raise ValueError(f"table: duplicate column names {list(df.columns[df.columns.duplicated()])}; "
                         "rename them before showing the table")
    per_col = dict(digits) if isinstance(digits, Mapping) else {}
    unknown = set(per_col) - set(df.columns)
    if unknown:
        raise ValueError(f"table: digits names columns the table does not have: {sorted(unknown)} "
                         f"(columns: {list(df.columns)})")
    default = 2 if isinstance(digits, Mapping) else int(digits)

    numbers = df.copy()
    cells = {}
    numeric = []
    for c in df.columns:
        col = df[c]
        is_num = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        if is_num:
            numeric.append(c)
            d = per_col.get(c, default)
            numbers[c] = col.round(d) if pd.api.types.is_float_dtype(col) else col
        else:
            d = per_col.get(c, default)
        cells[c] = [_fmt_cell(v, d, c in signed) for v in col.tolist()]
    data = pd.DataFrame(cells, columns=df.columns)

    if verdict_col is None:
        vcols = ()
    else:
        wanted = (verdict_col,) if isinstance(verdict_col, str) else tuple(verdict_col)
        vcols = tuple(c for c in wanted if c in data.columns)
    if fold_after is not None and int(fold_after) < 1:
        raise ValueError(f"table: fold_after must be a positive number of rows or None, not {fold_after!r}")
    if table_id is None:
        h = hashlib.sha1(repr((caption, list(data.columns), data.values.tolist())).encode()).hexdigest()
        table_id = "rc_" + h[:10]
    return Table(data, numbers, str(table_id), caption, fold_after, vcols, tuple(numeric))


# --- status of a chapter's stored outputs -------------------------------------------------------

@dataclass(frozen=True)
class ChapterState:
    """Where a chapter's stored outputs come from (what ``status_banner`` and the overview show).

    ``device``, ``date`` (ISO day), ``gpu_minutes`` (results made on a GPU), ``cpu_minutes`` (made on
    a CPU) and ``command`` describe a paper-profile run;
    ``missing`` and ``stale`` name the results (tables, figures) not made yet, or made by older code
    or settings than the chapter's current ones.
    """
    chapter: str | None = None
    device: str | None = None
    date: str | None = None
    gpu_minutes: float | None = None
    cpu_minutes: float | None = None
    command: str | None = None
    missing: tuple = ()
    stale: tuple = ()

    @classmethod
    def from_states(cls, chapter: str, states, command: str | None = None) -> "ChapterState":
        """The state of a chapter from its items' states (``recollect.experiments.items.item_states``:
        dicts with ``name``, ``state`` (done / stale / missing / unversioned) and, when made,
        ``device``, ``on_gpu``, ``seconds`` and ``date``). Devices of the current results are listed
        once each, the date is the latest day; the minutes are counted apart for results made on a
        GPU and on a CPU (a result at the paper's settings may be made on either)."""
        done = [s for s in states if s["state"] == "done"]
        devices = sorted({s["device"] for s in done if s.get("device")})
        dates = sorted(str(s["date"])[:10] for s in done if s.get("date"))
        gpu = sum(float(s.get("seconds") or 0.0) for s in done if s.get("on_gpu")) / 60
        cpu = sum(float(s.get("seconds") or 0.0) for s in done if not s.get("on_gpu")) / 60
        return cls(chapter=chapter, device=", ".join(devices) or None, date=dates[-1] if dates else None,
                   gpu_minutes=gpu if done else None, cpu_minutes=cpu if done else None, command=command,
                   missing=tuple(s["name"] for s in states if s["state"] in ("missing", "unversioned")),
                   stale=tuple(s["name"] for s in states if s["state"] == "stale"))

    def minutes_text(self) -> str:
        """``"12 GPU-minutes and 40 CPU-minutes"`` (the parts that are there), or ``""``."""
        parts = [f"{m:.0f} {what}-minutes" for m, what in ((self.gpu_minutes, "GPU"), (self.cpu_minutes, "CPU"))
                 if m is not None and (m > 0 or what == "GPU")]
        return " and ".join(parts)


@dataclass(frozen=True)
class StatusBanner:
    """An admonition (HTML, in the theme's own classes) with a deterministic plain-text twin."""
    kind: str            # the admonition class: "warning", "note", ...
    title: str
    lines: tuple         # paragraphs, plain text
    items: tuple = ()    # (heading, (entries...)) lists under the paragraphs
    code: tuple = ()     # (label, command) shown as code

    def __repr__(self) -> str:
        out = [self.title.upper()]
        out += [_fill(l) for l in self.lines]
        for label, cmd in self.code:
            out.append(f"{label}: {cmd}")
        for head, entries in self.items:
            out.append(f"{head}:")
            out += [f"  - {e}" for e in entries]
        return "\n".join(out)

    __str__ = __repr__

    def to_html(self) -> str:
        e = _html.escape
        parts = [f'<div class="admonition {e(self.kind)} rc-status">',
                 f'<p class="admonition-title">{e(self.title)}</p>']
        parts += [f"<p>{e(l)}</p>" for l in self.lines]
        for label, cmd in self.code:
            parts.append(f"<p>{e(label)}: <code>{e(cmd)}</code></p>")
        for head, entries in self.items:
            parts.append(f"<p>{e(head)}:</p><ul>" + "".join(f"<li>{e(x)}</li>" for x in entries) + "</ul>")
        parts.append("</div>")
        return "\n".join(parts) + "\n"

    def _repr_html_(self) -> str:
        return self.to_html()


def _fill(text: str, width: int = 100) -> str:
    return textwrap.fill(text, width=width, break_long_words=False, break_on_hyphens=False)


def status_banner(profile: str, state: ChapterState | Mapping | None = None, *,
                  chapter: str | None = None) -> StatusBanner:
    """The admonition at the top of a chapter: which profile its stored outputs come from and what
    that means for the verdicts below.

    ``profile`` is ``"smoke"`` or ``"paper"``; ``state`` a ``ChapterState`` (or a dict of its fields)
    saying, for a paper run, the device, date, GPU-minutes and command, and which results are missing
    or stale. ``chapter`` (the CLI name, e.g. ``"distortion"``) fills in the re-run command.
    """
    if isinstance(state, Mapping):
        unknown = set(state) - set(ChapterState.__dataclass_fields__)
        if unknown:
            raise ValueError(f"status_banner: unknown state fields {sorted(unknown)}; "
                             f"known: {sorted(ChapterState.__dataclass_fields__)}")
        state = ChapterState(**state)
    state = state or ChapterState()
    chapter = chapter or state.chapter
    name = chapter or "<chapter>"
    paper_cmd = state.command or f"python -m recollect run {name} --profile paper"
    items = []
    if state.missing:
        items.append(("Not made yet (no verdict on these)", tuple(map(str, state.missing))))
    if state.stale:
        items.append(("Stale: made by older code or settings (their verdicts are not current)",
                      tuple(map(str, state.stale))))

    if profile == "smoke":
        return StatusBanner(
            "warning", "Smoke profile: these are not the paper's results",
            ("The stored outputs of this chapter come from the smoke profile: a regression check of "
             "the code on CPU subsets (real data, small models, few steps). Its verdicts say nothing "
             "about the paper: a 'differs' below is expected and is not the reproduction's outcome.",
             "The paper profile needs a GPU."),
            tuple(items), (("Make the paper-profile results", paper_cmd),))
    if profile == "paper":
        made = []
        if state.device:
            made.append(f"on {state.device}")
        if state.date:
            made.append(f"on {state.date}")
        lead = "The stored outputs of this chapter come from the paper profile (the paper's settings)"
        lead += (", made " + " ".join(made)) if made else ""
        if state.minutes_text():
            lead += f", {state.minutes_text()}"
        lead += "."
        if items:
            return StatusBanner("warning", "Paper profile, partly missing or stale",
                                (lead, "The verdicts hold for the results made with the current code; "
                                       "the ones listed below are not current."),
                                tuple(items), (("Re-run", paper_cmd),))
        return StatusBanner("note", "Paper profile: the verdicts below are the reproduction's outcome",
                            (lead,), (), (("Re-run", paper_cmd),))
    raise ValueError(f"status_banner: unknown profile {profile!r}; choose 'smoke' or 'paper'")


def status(ctx, chapter: str) -> StatusBanner:
    """The admonition at the top of a chapter (one call per chapter): at the smoke profile, that the
    outputs are a regression check; at the paper profile, where the chapter's results in ``results/``
    were made, and which are missing or stale (``recollect.experiments.items.item_states``)."""
    from .experiments.items import item_states

    cmd = f"python -m recollect run {chapter} --profile paper"
    if ctx.smoke:
        return status_banner("smoke", ChapterState(chapter=chapter, command=cmd), chapter=chapter)
    return status_banner("paper", ChapterState.from_states(chapter, item_states(chapter), cmd), chapter=chapter)
