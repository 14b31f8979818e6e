"""Verdicts on ordering claims, decided from the result files by one rule (pure functions over pandas frames).

The rule, for a claim "A > B" on a metric m, with A's and B's values of m in the same seeds s = 1..n:

    d_s = m(A, s) − m(B, s)                     (paired by seed)
    Δ   = mean_s d_s = mean(A) − mean(B)
    σ   = pooled seed std = sqrt(((n_A − 1)·sd_A² + (n_B − 1)·sd_B²) / (n_A + n_B − 2))   (sd with ddof 1)
    "A > B"  holds           when d_s > 0 in every seed and Δ > σ;
             does not hold   when "B > A" holds by the same rule;
             is inconclusive otherwise.
    "A ≈ B"  holds           when |Δ| ≤ σ; does not hold when "A > B" or "B > A" holds; inconclusive otherwise.
    "A ≥ B"  holds           when Δ ≥ −σ (A is not below B by more than σ: "A > B" or "A ≈ B" or A ahead);
             does not hold   when "B > A" holds; inconclusive otherwise (A below B by more than σ, not in every seed).
    "A < B", "A ≤ B" are "B > A", "B ≥ A".

Relations compare the metric's raw values (write "js < kl" on KL(p‖π), "kl < rkl" on Self-BLEU).

A chain such as "rkl ≥ js ≈ tv > kl" is split at > and ≥ (or < and ≤) into groups of names joined by ≈
([rkl] ≥ [js, tv] > [kl]) and decided link by link: every pair within a group is a "≈" link, and every member of a
group is linked to every member of the next group by the relation between them (rkl ≥ js, rkl ≥ tv, js ≈ tv,
js > kl, tv > kl). A claim is the conjunction of its links: it holds when every link holds, does not hold when at
least one link does not hold, and is inconclusive otherwise.

Frames are `results.final_frame`-shaped: one row per run with columns `divergence` (or any name column), `seed` and
the metrics. Nothing here imports torch.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pandas as pd

from fdpg_core.kit import results

__all__ = ["HOLDS", "FAILS", "INCONCLUSIVE", "VERDICTS", "RELATIONS", "Link", "pooled_std", "decide",
           "parse_chain", "chain_links", "decide_chain", "combine", "seed_values", "load_experiment_runs"]

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE)
_ASCII = {">=": "≥", "<=": "≤", "~": "≈"}
RELATIONS = (">", "≥", "≈", "<", "≤")


def load_experiment_runs(results_dir, experiment: str, preset: str = "cpu") -> list[dict]:
    """The runs that the verdicts of `experiment` are computed from: the result files under `results_dir` made by
    that experiment's notebook with the parameters of `preset` (its fingerprint). This is the one place that
    chooses runs for verdicts. ValueError if no run matches."""
    from fdpg_core.kit import notebook

    names = [p.stem for p in notebook.list_notebooks()
             if preset == "smoke" or notebook.preset_path(p.stem, preset).exists()]
    fps = [notebook.preset_fingerprint(n, preset) for n in names]  # the notebooks that have this preset
    fp = next((f for e, f in fps if e == experiment), None)
    if fp is None:
        raise ValueError(f"no notebook runs experiment {experiment!r} at preset {preset!r}; allowed: "
                         f"{sorted(e for e, _ in fps)}")
    runs = [r for r in results.load_runs(results_dir, experiment=experiment, fingerprint=fp, verbose=False)
            if r.get("preset") == preset]
    if not runs:
        raise ValueError(f"no run of experiment {experiment!r} with preset {preset!r} in {str(results_dir)!r}")
    return runs


def pooled_std(a, b) -> float:
    """Pooled sample std of two groups (ddof 1 within each): sqrt(((n_a−1)s_a² + (n_b−1)s_b²)/(n_a+n_b−2));
    0 when both groups have one value."""
    a, b = pd.Series(a, dtype=float), pd.Series(b, dtype=float)
    dof = len(a) + len(b) - 2
    if dof <= 0:
        return 0.0
    ss = (len(a) - 1) * (a.var(ddof=1) if len(a) > 1 else 0.0) + (len(b) - 1) * (b.var(ddof=1) if len(b) > 1 else 0.0)
    return math.sqrt(ss / dof)


@dataclass(frozen=True)
class Link:
    """One decided link "left rel right" on `metric`: its verdict and the numbers behind it."""

    left: str
    rel: str
    right: str
    metric: str
    verdict: str
    values_left: tuple   # per seed, in `seeds` order
    values_right: tuple
    seeds: tuple
    sigma: float         # pooled seed std
    reason: str = field(default="")  # why it does not hold / is inconclusive ("" when it holds)

    @property
    def mean_left(self) -> float:
        return sum(self.values_left) / len(self.values_left)

    @property
    def mean_right(self) -> float:
        return sum(self.values_right) / len(self.values_right)

    @property
    def delta(self) -> float:
        """mean(left) − mean(right)."""
        return self.mean_left - self.mean_right

    @property
    def text(self) -> str:
        return f"{self.left} {self.rel} {self.right}"


def _fmt(x: float, digits: int) -> str:
    return f"{round(x, digits) + 0.0:.{digits}f}".replace("-", "−")  # a true minus sign, as in the tables


def _greater(a: tuple, b: tuple, sigma: float) -> bool:
    """The strict rule: a_s > b_s in every seed and mean(a) − mean(b) > σ."""
    return all(x > y for x, y in zip(a, b)) and (sum(a) - sum(b)) / len(a) > sigma


def decide(a_name: str, a_values, rel: str, b_name: str, b_values, *, metric: str = "", digits: int = 3) -> Link:
    """Decide "a rel b" from per-seed values (pd.Series indexed by seed, or sequences in the same seed order)."""
    rel = _ASCII.get(rel, rel)
    if rel not in RELATIONS:
        raise ValueError(f"relation {rel!r} in '{a_name} {rel} {b_name}'; allowed: {' '.join(RELATIONS)}")
    if rel in ("<", "≤"):  # "A < B" is "B > A"; keep the claim's wording in the link
        flipped = decide(b_name, b_values, {"<": ">", "≤": "≥"}[rel], a_name, a_values, metric=metric, digits=digits)
        return Link(a_name, rel, b_name, metric, flipped.verdict, flipped.values_right, flipped.values_left,
                    flipped.seeds, flipped.sigma, flipped.reason)
    sa, sb = _as_series(a_values), _as_series(b_values)
    if list(sa.index) != list(sb.index):
        raise ValueError(f"'{a_name} {rel} {b_name}' on {metric or 'the metric'}: seeds differ "
                         f"({list(sa.index)} vs {list(sb.index)}); the rule pairs values by seed")
    if len(sa) == 0:
        raise ValueError(f"'{a_name} {rel} {b_name}' on {metric or 'the metric'}: no seed")
    for name, s in ((a_name, sa), (b_name, sb)):
        bad = [seed for seed, v in s.items() if not math.isfinite(v)]  # NaN (missing) or ±inf
        if bad:
            raise ValueError(f"'{a_name} {rel} {b_name}': {name} has a missing or non-finite "
                             f"{metric or 'value'} in seeds {bad}; the rule needs a finite value in every seed")
    a, b, seeds = tuple(float(v) for v in sa), tuple(float(v) for v in sb), tuple(sa.index)
    sigma = pooled_std(a, b)
    n = len(a)
    da, db = sum(a) / n, sum(b) / n
    a_gt, b_gt = _greater(a, b, sigma), _greater(b, a, sigma)
    f = lambda x: _fmt(x, digits)  # noqa: E731
    sep = f"Δ {f(abs(da - db))} {'>' if abs(da - db) > sigma else '≤'} σ {f(sigma)}"
    if rel == ">":
        if a_gt:
            return Link(a_name, rel, b_name, metric, HOLDS, a, b, seeds, sigma)
        if b_gt:
            return Link(a_name, rel, b_name, metric, FAILS, a, b, seeds, sigma,
                        f"{b_name} > {a_name}: {sep}, every seed")
        bad = [s for s, x, y in zip(seeds, a, b) if not x > y]
        if bad:
            def pair(x, y):  # two more decimals where the rounded values would read as equal
                return (f(x), f(y)) if f(x) != f(y) or x == y else (_fmt(x, digits + 2), _fmt(y, digits + 2))
            why = ", ".join(f"seed {s}: {a_name} {pair(x, y)[0]} {'<' if x < y else '='} {b_name} {pair(x, y)[1]}"
                            for s, x, y in zip(seeds, a, b) if s in bad)
        else:
            why = f"every seed, but {sep}"
        return Link(a_name, rel, b_name, metric, INCONCLUSIVE, a, b, seeds, sigma, why)
    if rel == "≈":
        if abs(da - db) <= sigma:
            return Link(a_name, rel, b_name, metric, HOLDS, a, b, seeds, sigma)
        if a_gt or b_gt:
            hi, lo = (a_name, b_name) if a_gt else (b_name, a_name)
            return Link(a_name, rel, b_name, metric, FAILS, a, b, seeds, sigma, f"{hi} > {lo}: {sep}, every seed")
        hi, lo = (a_name, b_name) if da > db else (b_name, a_name)
        return Link(a_name, rel, b_name, metric, INCONCLUSIVE, a, b, seeds, sigma,
                    f"{hi} above {lo} by {sep}, not in every seed")
    # rel == "≥": A is not below B by more than σ (monotone: a larger lead never makes it fail)
    if da - db >= -sigma:
        return Link(a_name, rel, b_name, metric, HOLDS, a, b, seeds, sigma)
    if b_gt:
        return Link(a_name, rel, b_name, metric, FAILS, a, b, seeds, sigma, f"{b_name} > {a_name}: {sep}, every seed")
    return Link(a_name, rel, b_name, metric, INCONCLUSIVE, a, b, seeds, sigma,
                f"{a_name} below {b_name} by {sep}, not in every seed")


def _as_series(values) -> pd.Series:
    if isinstance(values, pd.Series):
        return values.sort_index().astype(float)
    return pd.Series(list(values), dtype=float)


_TOKEN = re.compile(r"\s*(>=|<=|[>≥≈<≤~])\s*")


def parse_chain(chain: str) -> tuple[list[list[str]], list[str]]:
    """'rkl ≥ js ≈ tv > kl' → ([['rkl'], ['js', 'tv'], ['kl']], ['≥', '>']). A chain uses > / ≥ or < / ≤, not both
    directions; names are anything without spaces or relation signs."""
    parts = _TOKEN.split(chain.strip())
    names, rels = parts[0::2], [_ASCII.get(r, r) for r in parts[1::2]]
    if len(names) < 2 or any(not n or " " in n for n in names):
        raise ValueError(f"chain {chain!r}: expected names separated by one of {' '.join(RELATIONS)}, e.g. "
                         f"'rkl ≥ js ≈ tv > kl'")
    if {r for r in rels} & {">", "≥"} and {r for r in rels} & {"<", "≤"}:
        raise ValueError(f"chain {chain!r} mixes > / ≥ with < / ≤; write one direction")
    groups, ops = [[names[0]]], []
    for rel, name in zip(rels, names[1:]):
        if rel == "≈":
            groups[-1].append(name)
        else:
            ops.append(rel)
            groups.append([name])
    seen = [n for g in groups for n in g]
    if len(set(seen)) != len(seen):
        raise ValueError(f"chain {chain!r} names {sorted({n for n in seen if seen.count(n) > 1})} more than once")
    return groups, ops


def chain_links(chain: str) -> list[tuple[str, str, str]]:
    """The links of a chain, in reading order: within each ≈ group every pair (i < j), then every member of a group
    against every member of the next group."""
    groups, ops = parse_chain(chain)
    links = []
    for i, g in enumerate(groups):
        links += [(g[x], "≈", g[y]) for x in range(len(g)) for y in range(x + 1, len(g))]
        if i < len(ops):
            links += [(left, ops[i], right) for left in g for right in groups[i + 1]]
    return links


def seed_values(frame: pd.DataFrame, metric: str, name: str, *, by: str = "divergence") -> pd.Series:
    """The per-seed values of `metric` for the rows where frame[by] == name, indexed by seed (sorted)."""
    if metric not in frame.columns:
        raise ValueError(f"metric {metric!r} not in the frame; columns: {sorted(map(str, frame.columns))}")
    rows = frame[frame[by] == name]
    if rows.empty:
        raise ValueError(f"no row with {by} = {name!r}; allowed: {sorted(map(str, frame[by].unique()))}")
    if rows["seed"].duplicated().any():
        raise ValueError(f"{by} = {name!r} has several rows for seeds "
                         f"{sorted(rows['seed'][rows['seed'].duplicated()].unique())}; select one setting first")
    return rows.set_index("seed")[metric].sort_index().astype(float)


def decide_chain(frame: pd.DataFrame, metric: str, chain: str, *, by: str = "divergence",
                 digits: int = 3) -> list[Link]:
    """Every link of `chain` decided on `metric` (values of the rows frame[by] == name, paired by seed)."""
    return [decide(a, seed_values(frame, metric, a, by=by), rel, b, seed_values(frame, metric, b, by=by),
                   metric=metric, digits=digits) for a, rel, b in chain_links(chain)]


def combine(verdicts) -> str:
    """A conjunction's verdict: holds when every part holds, does not hold when one part does not hold,
    inconclusive otherwise. ValueError on an empty list or an unknown verdict."""
    verdicts = [getattr(v, "verdict", v) for v in verdicts]
    if not verdicts:
        raise ValueError("combine: no verdict to combine")
    bad = [v for v in verdicts if v not in VERDICTS]
    if bad:
        raise ValueError(f"combine: unknown verdicts {bad}; allowed: {VERDICTS}")
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE

