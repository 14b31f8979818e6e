"""Result files, tables and figures shared by every notebook (the conventions of notebooks/README.md).

One JSON per (setting, divergence, seed) run, written by `save_run`:

    {"version": 1, "experiment": "toy_exact", "preset": "cpu", "fingerprint": "3f2a9c0b7d41", "params": {...},
     "setting": "well", "divergence": "js", "seed": 0, "config": {...FDPGConfig.to_dict() + notebook keys...},
     "history": [train() records], "final": {metric: float}, "arrays": {name: list}}

The fingerprint is a hash of every notebook parameter that changes a run's numbers (`fingerprint`): the
parameters that only say where files go or how things are shown (out_dir, fig_dir, preset, rerun, torch_threads,
device, smooth, progress) and the sweep lists that name which runs to make (divergences, seeds, tasks, ...) are
left out, since a run's own setting, divergence and seed are stored beside it. So a folder can hold the runs of several
experiments and parameter sets without mixing them: `load_runs(dir, experiment=..., fingerprint=...)` returns only
the matching runs (and says how many it skipped), and `find_run` lets a notebook reuse a run instead of
training it again.

Evaluation records: what a notebook computes at a preset that is not a training run but takes long (a reference
sample of a, evaluations of the base model) is saved once by `save_record` as a small JSON of summaries,
<out_dir>/<kind>/<name>-<fingerprint>.json, the fingerprint covering every parameter that changes it, and read back
by `load_record` instead of being computed again. Run files and records are written atomically; an unreadable one is
skipped with a warning naming it.

Rendering (scripts/render_notebooks.py) sets FDPG_NO_TRAIN=1: `find_run` then raises instead of returning None, so
a rendering never trains a run that is not saved.

Figures and tables are rebuilt from these files only: `load_runs` → `history_frame` (one row per history
record, with `samples_seen`) / `final_frame` (one row per run) → `plot_curves`, `mean_std`, `write_table`;
`show_table` displays a table in the notebook (HTML, with a Markdown text/plain for logs).
Figures fit a notebook's width: at most FIG_WIDTH inches wide, at most MAX_COLS panels per row (`panel_grid`),
every band described by `seeds_phrase` ("mean ± 1 std over N seeds", N counted from the data).
Every curve is plotted against the number of samples seen: the record of step s holds metrics of θ_s, the
parameters after s updates, i.e. after s · batch_size samples (samples_seen = step · batch_size).

Colours: one fixed colour per divergence across the kit (`divergence_color`); the Amari α-family runs on
a blue (α = 0, forward KL like `kl`) to red (α = 1, reverse KL like `rkl`) scale.
Nothing here changes global matplotlib state (no rcParams).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import warnings
from pathlib import Path

import pandas as pd

__all__ = ["DIVERGENCE_COLORS", "REPO_ROOT", "divergence_color", "divergence_label", "sort_divergences",
           "output_dirs", "PRESENTATION_PARAMS", "fingerprint", "run_filename", "save_run", "load_runs",
           "find_run", "NO_TRAIN_ENV", "record_path", "save_record", "load_record", "history_frame", "final_frame",
           "mean_std", "format_mean_std", "FIG_WIDTH", "MAX_COLS", "panel_grid", "seeds_phrase", "plot_curves",
           "save_figure", "write_table", "to_markdown", "table_html", "show_table"]

VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[2]

# kit-wide colour of each divergence key (order = the divergence table's)
DIVERGENCE_COLORS = {
    "kl": "#1f77b4",         # blue: forward KL, mode covering
    "rkl": "#d62728",        # red: reverse KL, mode seeking
    "js": "#2ca02c",         # green: Jensen-Shannon (the paper's default)
    "tv": "#9467bd",         # purple: total variation
    "chi2": "#17becf",       # cyan
    "rchi2": "#ff7f0e",      # orange
    "hellinger": "#8c564b",  # brown
}
_SHORT = {"kl": "KL(p‖π)", "rkl": "KL(π‖p)", "js": "JS", "tv": "TV", "chi2": "χ²(p‖π)", "rchi2": "χ²(π‖p)",
          "hellinger": "Hellinger²"}
_ALPHA = re.compile(r"^alpha=(-?[0-9.eE+-]+)$")


def _alpha_of(name: str) -> float | None:
    m = _ALPHA.match(name)
    return float(m.group(1)) if m else None


_ALPHA_SCALE = ("#3b4cc0", "#6b6b6b", "#b40426")  # α = 0 (blue) → ½ (dark grey, visible on white) → 1 (red)


def divergence_color(name: str) -> str:
    """The kit-wide colour of a divergence key, or of an α-divergence name 'alpha=<a>' (blue → grey → red on [0, 1])."""
    if name in DIVERGENCE_COLORS:
        return DIVERGENCE_COLORS[name]
    a = _alpha_of(name)
    if a is None:
        raise ValueError(f"no colour for divergence {name!r}; allowed: {sorted(DIVERGENCE_COLORS)} or 'alpha=<a>'")
    from matplotlib import colors
    cmap = colors.LinearSegmentedColormap.from_list("fdpg_alpha", _ALPHA_SCALE)
    return colors.to_hex(cmap(min(max(a, 0.0), 1.0)))


def divergence_label(name: str) -> str:
    """Legend label: 'kl: KL(p‖π)', 'α = 0.25'."""
    a = _alpha_of(name)
    return f"α = {a:g}" if a is not None else f"{name}: {_SHORT.get(name, name)}"


def sort_divergences(names) -> list[str]:
    """Unique names in table order, then α-divergences by α, then anything else alphabetically."""
    keys = list(DIVERGENCE_COLORS)

    def key(n):
        a = _alpha_of(n)
        return (0, keys.index(n), 0.0, "") if n in keys else (1, 0, a, "") if a is not None else (2, 0, 0.0, n)
    return sorted(set(names), key=key)


def output_dirs(out_dir, fig_dir, experiment: str) -> tuple[Path, Path]:
    """Resolve a notebook's out_dir / fig_dir: None → a fresh temp dir, relative → under the repo root. Created."""
    dirs = []
    for d, kind in ((out_dir, "results"), (fig_dir, "figures")):
        if d is None:
            p = Path(tempfile.mkdtemp(prefix=f"fdpg_{experiment}_{kind}_"))
        else:
            p = Path(d) if Path(d).is_absolute() else REPO_ROOT / d
            p.mkdir(parents=True, exist_ok=True)
        dirs.append(p)
    return dirs[0], dirs[1]


# notebook parameters that never change a run's numbers: where files go and how results are shown
PRESENTATION_PARAMS = frozenset({"out_dir", "fig_dir", "preset", "rerun", "torch_threads", "device", "smooth",
                                 "progress"})


def fingerprint(params: dict, *, sweep=(), added=None) -> str:
    """12 hex digits identifying the parameters that change a run's numbers: `params` (a notebook's parameters)
    without PRESENTATION_PARAMS and without the `sweep` names (the lists that say which runs to make, e.g.
    divergences, seed, n_seeds, tasks), hashed from canonical JSON (sorted keys, 7 significant digits per float,
    as stored; 1 and 1.0 hash alike). `added` ({name: default}) names parameters a notebook gained after runs
    were saved: each is left out while it holds that default, so those runs keep their fingerprint."""
    for what, names in (("sweep", sweep), ("added", added or {})):
        unknown = sorted(set(names) - set(params))
        if unknown:
            raise ValueError(f"fingerprint: {what} names {unknown} are not parameters; allowed: {sorted(params)}")
    kept = {k: v for k, v in params.items() if k not in PRESENTATION_PARAMS and k not in set(sweep)
            and not (k in (added or {}) and v == added[k])}

    def ints(x):  # on the stored (cleaned) values: 10.0 → 10
        return int(x) if isinstance(x, float) and x.is_integer() else [ints(v) for v in x] if isinstance(x, list) \
            else {k: ints(v) for k, v in x.items()} if isinstance(x, dict) else x
    text = json.dumps(ints(_clean(kept)), sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_filename(divergence: str, seed: int, setting: str | None = None, *, experiment: str | None = None,
                 fingerprint: str | None = None) -> str:
    """'<experiment>__<setting>__<divergence>__seed<k>__<fingerprint>.json' (each part only when given), with the
    divergence made file-safe ('alpha=0.25' → 'alpha0.25')."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "", str(divergence))
    parts = ([experiment] if experiment else []) + ([setting] if setting else []) + [safe, f"seed{int(seed)}"]
    parts += [fingerprint] if fingerprint else []
    return "__".join(parts) + ".json"


FLOAT_DIGITS = 7  # significant digits of every float stored in a result file


def _clean(x):
    """JSON-safe copy: floats to FLOAT_DIGITS significant digits, non-finite floats → None, tuples → lists,
    numpy/torch scalars and tensors → Python numbers and lists."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return _clean(x.tolist())
    if isinstance(x, float):  # 7 significant digits: far below any plotted difference, half the file size
        return float(f"{x:.{FLOAT_DIGITS}g}") if math.isfinite(x) else None
    if x is None or isinstance(x, (bool, int, str)):
        return x
    raise ValueError(f"save_run: cannot store {type(x).__name__} {x!r}; allowed: numbers, str, None, lists, dicts")


def save_run(out_dir, *, experiment: str, divergence: str, seed: int, config: dict, history: list[dict],
             final: dict, setting: str | None = None, preset: str | None = None, fingerprint: str | None = None,
             params: dict | None = None, arrays: dict | None = None) -> Path:
    """Write one run's JSON (atomically) and return its path. `config` must hold 'batch_size'. `fingerprint`
    (of the notebook's `params`, see `fingerprint`) is part of the file name, so runs made with other parameters
    sit beside this one instead of being overwritten."""
    if "batch_size" not in config:
        raise ValueError(f"save_run: config needs 'batch_size' (for samples_seen); got keys {sorted(config)}")
    rec = {"version": VERSION, "experiment": experiment, "preset": preset, "fingerprint": fingerprint,
           "params": params or {}, "setting": setting, "divergence": str(divergence), "seed": int(seed),
           "config": config, "history": history, "final": final, "arrays": arrays or {}}
    path = Path(out_dir) / run_filename(divergence, seed, setting, experiment=experiment, fingerprint=fingerprint)
    return _write_json(path, rec)


def _write_json(path: Path, rec: dict) -> Path:
    """Write `rec` (cleaned by `_clean`) to `path` atomically: a temp file beside it, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(rec), allow_nan=False, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


_RUN_KEYS = ("experiment", "setting", "divergence", "seed", "config", "history", "final")


def _read_run(path: Path) -> dict | None:
    """The run in `path`, or None (with a warning naming the file) if it is not a readable run JSON."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warnings.warn(f"results: skipped {path}: not a readable JSON file ({e})", stacklevel=3)
        return None
    missing = [k for k in _RUN_KEYS if not isinstance(rec, dict) or k not in rec]
    if missing:
        warnings.warn(f"results: skipped {path}: not a run file (missing {missing})", stacklevel=3)
        return None
    return rec


def load_runs(results_dir, *, experiment: str | None = None, fingerprint: str | None = None, keys=None,
              verbose: bool = True) -> list[dict]:
    """The run JSONs under `results_dir` (sorted by file name) of `experiment` made with `fingerprint` (each filter
    only when given), and, when `keys` is given, only those whose (setting, divergence, seed) is in it.

    A file that is not a readable run is skipped with a warning naming it. With a filter and `verbose`, prints how
    many runs were used and how many skipped (other experiment, other parameters, not asked for). ValueError if no
    run is left.
    """
    paths = sorted(Path(results_dir).glob("*.json"))
    runs, skipped = [], {"other experiment": 0, "other parameters": 0, "not asked for": 0, "unreadable": 0}
    keys = None if keys is None else {(s, str(d), int(k)) for s, d, k in keys}
    for p in paths:
        r = _read_run(p)
        why = "unreadable" if r is None else \
            "other experiment" if experiment is not None and r["experiment"] != experiment else \
            "other parameters" if fingerprint is not None and r.get("fingerprint") != fingerprint else \
            "not asked for" if keys is not None and (r["setting"], r["divergence"], r["seed"]) not in keys else None
        if why:
            skipped[why] += 1
        else:
            runs.append(r)
    filtered = experiment is not None or fingerprint is not None or keys is not None
    if verbose and filtered:
        why = ", ".join(f"{n} {k}" for k, n in skipped.items() if n)
        print(f"results: {len(runs)} run(s) of {experiment or 'any experiment'}"
              f"{f' with parameters {fingerprint}' if fingerprint else ''} from {results_dir}"
              f"; skipped {sum(skipped.values())}{f' ({why})' if why else ''}")
    if not runs:
        what = f" of {experiment!r}" if experiment else ""
        what += f" with fingerprint {fingerprint!r}" if fingerprint else ""
        raise ValueError(f"load_runs: no result JSON{what} in {str(results_dir)!r}"
                         + (f" (skipped {sum(skipped.values())} other files)" if any(skipped.values()) else ""))
    return runs


def find_run(results_dir, *, experiment: str, fingerprint: str, setting: str | None, divergence: str,
             seed: int) -> Path | None:
    """The path of the saved run of (setting, divergence, seed) made by `experiment` with `fingerprint`, if a
    readable one is in `results_dir` (its file name is checked first, then its contents), else None."""
    path = Path(results_dir) / run_filename(divergence, seed, setting, experiment=experiment, fingerprint=fingerprint)
    r = _read_run(path) if path.exists() else None
    ok = r is not None and (r["experiment"], r.get("fingerprint"), r["setting"], r["divergence"], r["seed"]) == \
        (experiment, fingerprint, setting, str(divergence), int(seed))
    if not ok and os.environ.get(NO_TRAIN_ENV, "") not in ("", "0"):
        raise RuntimeError(f"{NO_TRAIN_ENV}={os.environ[NO_TRAIN_ENV]} (a rendering never trains): the run "
                           f"{path.name} is not saved in {results_dir}; train it first with scripts/run_notebooks.py "
                           "at this preset")
    return path if ok else None


NO_TRAIN_ENV = "FDPG_NO_TRAIN"  # set (not "" or "0"): find_run raises where a notebook would train (a rendering)


def record_path(out_dir, kind: str, name: str, fingerprint: str) -> Path:
    """<out_dir>/<kind>/<name>-<fingerprint>.json: an evaluation record (e.g. kind 'reference')."""
    for what, v in (("kind", kind), ("name", name)):
        if not re.fullmatch(r"[A-Za-z0-9_.+=-]+", str(v)):
            raise ValueError(f"record_path: {what}={v!r}; allowed: letters, digits and _ . + = -")
    return Path(out_dir) / kind / f"{name}-{fingerprint}.json"


def save_record(out_dir, kind: str, name: str, *, params: dict, data: dict) -> Path:
    """Write an evaluation record (atomically) and return its path: `data` (numbers, str, lists, dicts; floats kept
    to FLOAT_DIGITS) under the fingerprint of `params`, every parameter that changes it (see `fingerprint`)."""
    fp = fingerprint(params)
    rec = {"version": VERSION, "kind": kind, "name": name, "fingerprint": fp, "params": params, "data": data}
    return _write_json(record_path(out_dir, kind, name, fp), rec)


def load_record(out_dir, kind: str, name: str, *, params: dict) -> dict | None:
    """The `data` of the record saved by `save_record` with the same kind, name and `params` fingerprint, or None
    when there is none; an unreadable or mismatched file is skipped with a warning naming it (then None)."""
    fp = fingerprint(params)
    path = record_path(out_dir, kind, name, fp)
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warnings.warn(f"results: skipped {path}: not a readable JSON file ({e})", stacklevel=2)
        return None
    if not isinstance(rec, dict) or (rec.get("kind"), rec.get("name"), rec.get("fingerprint")) != (kind, name, fp) \
            or not isinstance(rec.get("data"), dict):
        warnings.warn(f"results: skipped {path}: not a {kind} record {name!r} with fingerprint {fp}", stacklevel=2)
        return None
    return rec["data"]


def history_frame(runs: list[dict]) -> pd.DataFrame:
    """Long frame: setting, divergence, seed, step, samples_seen (= step · batch_size), then one column per metric
    (NaN where a record lacks it, e.g. exact metrics only at eval steps)."""
    rows = []
    for r in runs:
        B = int(r["config"]["batch_size"])
        for h in r["history"]:
            rows.append({"setting": r["setting"], "divergence": r["divergence"], "seed": r["seed"],
                         "samples_seen": int(h["step"]) * B, **h})
    return pd.DataFrame(rows).astype({"step": int, "samples_seen": int})


def final_frame(runs: list[dict]) -> pd.DataFrame:
    """One row per run: setting, divergence, seed, then the run's `final` metrics."""
    return pd.DataFrame([{"setting": r["setting"], "divergence": r["divergence"], "seed": r["seed"], **r["final"]}
                         for r in runs])


def mean_std(df: pd.DataFrame, by, metrics, *, order: dict | None = None) -> pd.DataFrame:
    """Per group: <metric>_mean, <metric>_std (ddof = 1; 0 with one seed) and n_seeds.

    Rows sorted by the `by` columns: divergences in kit order (`sort_divergences`), a column listed in
    `order` ({column: [values in order]}) in that order, any other column by value.
    """
    by = [by] if isinstance(by, str) else list(by)
    g = df.groupby(by, sort=False)[list(metrics)]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=1).fillna(0.0).add_suffix("_std"))
    out["n_seeds"] = g.size()
    out = out[[f"{m}_{s}" for m in metrics for s in ("mean", "std")] + ["n_seeds"]].reset_index()
    ranks = {c: {v: i for i, v in enumerate(vals)} for c, vals in (order or {}).items()}
    if "divergence" in by and "divergence" not in ranks:
        ranks["divergence"] = {d: i for i, d in enumerate(sort_divergences(out["divergence"]))}
    out = out.sort_values(by, key=lambda s: s.map(ranks[s.name]) if s.name in ranks else s, kind="stable")
    return out.reset_index(drop=True)


def format_mean_std(stats: pd.DataFrame, metrics, digits: int = 3) -> pd.DataFrame:
    """'m ± s' strings (just 'm' when n_seeds == 1) for display; the group columns are kept."""
    keep = [c for c in stats.columns if not c.endswith(("_mean", "_std")) and c != "n_seeds"]
    out = stats[keep].copy()
    for m in metrics:
        mu, sd = stats[f"{m}_mean"], stats[f"{m}_std"]
        out[m] = ["–" if math.isnan(a) else f"{a:.{digits}f}" if n == 1 else f"{a:.{digits}f} ± {b:.{digits}f}"
                  for a, b, n in zip(mu, sd, stats["n_seeds"])]
    return out


FIG_WIDTH = 10.5  # inches: the widest figure that a notebook shows without shrinking its labels
MAX_COLS = 3  # panels per row at FIG_WIDTH


def panel_grid(n: int, *, ncols: int = MAX_COLS, height: float = 3.2, width: float = FIG_WIDTH, **subplots_kw):
    """(fig, [ax] * n): n panels on rows of at most `ncols` (≤ MAX_COLS), `width` (≤ FIG_WIDTH) inches wide and
    `height` inches per row, constrained layout; the grid's unused cells are removed."""
    if not 1 <= ncols <= MAX_COLS or n < 1 or width > FIG_WIDTH:
        raise ValueError(f"panel_grid: n={n}, ncols={ncols}, width={width}; allowed: n ≥ 1, 1 ≤ ncols ≤ {MAX_COLS}, "
                         f"width ≤ {FIG_WIDTH}")
    import matplotlib.pyplot as plt
    ncols = min(n, ncols)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height * nrows), squeeze=False, layout="constrained",
                             **subplots_kw)
    axes = list(axes.flat)
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def seeds_phrase(df: pd.DataFrame, *, by=("setting", "divergence")) -> str:
    """What a band or error bar shows: 'mean ± 1 std over N seeds', N = the seeds per group (the `by` columns
    present in df) counted in df ('2–3 seeds' where groups differ; 'one seed, no spread shown' for one)."""
    if "seed" not in df:
        raise ValueError(f"seeds_phrase: df has no 'seed' column; columns: {list(df.columns)}")
    by = [c for c in by if c in df]
    counts = df.groupby(by)["seed"].nunique() if by else pd.Series([df["seed"].nunique()])
    lo, hi = int(counts.min()), int(counts.max())
    if hi <= 1:
        return "one seed, no spread shown"
    return f"mean ± 1 std over {lo} seeds" if lo == hi else f"mean ± 1 std over {lo}–{hi} seeds"


def plot_curves(ax, hist: pd.DataFrame, metric: str, *, divergences=None, logy: bool = False, band: bool = True,
                title=None, ylabel=None, **line_kw):
    """Mean (line) ± std over seeds (band, when band and seeds > 1) of `metric` against samples seen, one colour
    per divergence."""
    d = hist.dropna(subset=[metric])
    names = sort_divergences(d["divergence"]) if divergences is None else list(divergences)
    for name in names:
        g = d[d["divergence"] == name].groupby("samples_seen")[metric]
        mu, sd = g.mean(), g.std(ddof=1).fillna(0.0)
        if mu.empty:
            continue
        c = divergence_color(name)
        ax.plot(mu.index, mu.values, color=c, label=divergence_label(name), **line_kw)
        if band and g.size().max() > 1:
            lo = mu - sd
            if logy:  # a log axis cannot show a band below 0: floor it at a tenth of the mean
                lo = lo.where(lo > 0, mu * 0.1)
            ax.fill_between(mu.index, lo.values, (mu + sd).values, color=c, alpha=0.2, linewidth=0)
    if logy:
        from matplotlib.ticker import NullFormatter
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        if hi > 30 * lo:  # ≥ 1.5 decades: decade labels only (minor labels would crowd the axis)
            ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("samples seen")
    ax.set_ylabel(ylabel or metric)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return ax


def save_figure(fig, fig_dir, name: str, *, dpi: int = 150) -> list[Path]:
    """Save `fig` as <fig_dir>/<name>.png and .pdf (no timestamps in the PDF, so reruns give identical files)."""
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = [fig_dir / f"{name}.png", fig_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None, "Creator": None, "Producer": None})
    return paths


def _cell(v, digits: int) -> str:
    """A table cell: floats rounded to `digits`, NaN (no value) as an en dash; round(-0.0001) + 0.0 prints 0.00,
    not -0.00."""
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{round(v, digits) + 0.0:.{digits}f}"
    return str(v)


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub pipe table (floats rounded to `digits`), without the tabulate dependency."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(v, digits).replace("|", "\\|") for v in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def table_html(df: pd.DataFrame, digits: int = 3, *, title: str | None = None) -> str:
    """The table as HTML, its cells written as in `to_markdown` (floats rounded to `digits`, 'm ± s' strings
    kept), numbers right-aligned; `title` above it."""
    cells = pd.DataFrame([[_cell(v, digits) for v in row] for row in df.itertuples(index=False)],
                         columns=[str(c) for c in df.columns])
    html = cells.to_html(index=False, border=0, justify="left", na_rep="–")
    return (f"<p><b>{_escape(title)}</b></p>\n" if title else "") + html


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def show_table(df: pd.DataFrame, digits: int = 3, *, title: str | None = None) -> None:
    """Display `df` in a notebook as an HTML table (`table_html`) whose text/plain is its `to_markdown` pipe table
    (what headless logs and tests read), `title` on the line above; outside IPython, print the text."""
    text = (f"{title}\n" if title else "") + to_markdown(df, digits)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # no IPython: a plain script
        get_ipython = None
    if get_ipython is None or get_ipython() is None:
        print(text, end="")
        return
    display({"text/html": table_html(df, digits, title=title), "text/plain": text}, raw=True)


def write_table(df: pd.DataFrame, out_dir, name: str, *, digits: int = 3, md: pd.DataFrame | None = None) -> list[Path]:
    """Write <out_dir>/<name>.csv (df, full precision) and <name>.md (`md` if given, e.g. format_mean_std's
    'm ± s' strings, else df rounded to `digits`); return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.csv", out_dir / f"{name}.md"]
    df.to_csv(paths[0], index=False)
    paths[1].write_text(to_markdown(df if md is None else md, digits), encoding="utf-8")
    return paths
