"""Rebuild every verdict table of the Results (README.md, docs/RESULTS_*.md) from the committed result files.

Each claim of the paper is written below as ordering chains on one metric ("rkl ≥ js ≈ tv > kl" on E_π[r]) and
decided by the one rule of `fdpg_core.kit.verdicts`, per setting (task, β, model size, ...). The generated text sits in
the Markdown files between markers, and only there:

    <!-- claims:begin NAME -->
    ...generated...
    <!-- claims:end -->

NAME is one of `REGIONS` (glance, glance-03-06, verdicts-00 … verdicts-08, toy-00, skipped-03, skipped-runs,
klpa-07, klpa-08, and verdicts-03-cpu-long, verdicts-01-cpu-smollm, verdicts-01-cpu-smollm-b64 for the runs of
the longer presets); a region may appear in several files.

Usage:
  python scripts/make_claims.py            # rewrite the generated regions in place (make claims)
  python scripts/make_claims.py --check    # exit 1 and print a diff when a committed region is out of date
"""
from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from fdpg_core.kit import results  # noqa: E402
from fdpg_core.kit import verdicts as V  # noqa: E402

RESULTS = REPO / "data" / "results"
FILES = ["README.md", "docs/RESULTS_01_02.md", "docs/RESULTS_03_06.md", "docs/RESULTS_07_08.md"]


# 1. claims: a Case is one setting (or one metric) of a claim; a Claim is decided per case -------------------------

@dataclass(frozen=True)
class Case:
    label: str                 # the setting as a reader knows it ("β = 0.1", "science", "stdlib test")
    metric: str                # column of the experiment's frame
    chains: tuple[str, ...]    # ordering chains on the metric's raw values, all of which must hold
    where: tuple = ()          # ((column, value), ...) rows kept before deciding, e.g. (("setting", "beta0.1"),)
    by: str = "divergence"     # the column whose values the chains name
    digits: int | None = None  # decimals shown (None: the claim's)


@dataclass(frozen=True)
class Claim:
    key: str                   # row of the claims-at-a-glance table ("" = shown only in the experiment's table)
    text: str                  # the claim, as the paper makes it
    metric: str                # what is compared, for the reader ("E_π[r]", "Distinct-2 (within context)")
    cases: tuple[Case, ...]
    digits: int = 3
    joint: bool = False        # the cases are parts of one claim (verdict: all must hold), not separate settings


@dataclass(frozen=True)
class Experiment:
    code: str                  # "03"
    name: str                  # result folder and `experiment` field
    column: str                # header in the claims-at-a-glance table
    noun: str                  # what a case is, plural ("tasks", "sizes", "β")
    claims: tuple[Claim, ...]
    frame: object = None       # runs → frame (default: frame_of, results.final_frame plus skipped updates)
    preset: str = "cpu"        # the preset whose runs are decided (data/results/<name>/<preset>)

    @property
    def region(self) -> str:
        """Name of its verdict region: verdicts-<code>, or verdicts-<code>-<preset> beyond the cpu preset."""
        return f"verdicts-{self.code}" + ("" if self.preset == "cpu" else f"-{self.preset}")


GLANCE = [  # (Claim.key, row label) of the claims-at-a-glance table, in this order
    ("alignment", "alignment rkl ≥ js ≈ tv > kl"), ("diversity", "diversity kl ≥ js ≈ tv > rkl"),
    ("js_kl", "js reaches a lower KL(p‖π) than kl"),
    ("rl", "rkl-DPG = KL-regularised RL: J rises and is highest for rkl"),
    ("entropy", "rkl's entropy collapses, then recovers"), ("heldout", "constraint rate rises on held-out contexts")]
ALIGN, DIVERSE = "rkl ≥ js ≈ tv > kl", "kl ≥ js ≈ tv > rkl"


def per_setting(settings: dict, metric: str, chains, **kw) -> tuple[Case, ...]:
    """One case per setting {setting value: label}."""
    chains = (chains,) if isinstance(chains, str) else tuple(chains)
    return tuple(Case(label, metric, chains, where=(("setting", s),), **kw) for s, label in settings.items())


# 2. frames: results.final_frame plus the rows a claim compares against (a, the target p) and derived columns -------

def _add_rows(fin: pd.DataFrame, name: str, columns: dict) -> pd.DataFrame:
    """Append one row per (setting, seed) with divergence = name and column ← the run's column (or a constant)."""
    first = fin.drop_duplicates(["setting", "seed"])
    rows = first[["setting", "seed"]].copy()
    rows["divergence"] = name
    for col, src in columns.items():
        rows[col] = first[src].to_numpy() if isinstance(src, str) else float(src)
    return pd.concat([fin, rows], ignore_index=True)


def skipped_updates(run: dict) -> int:
    """Updates a run skipped (its batch had no sample of nonzero target mass, Ẑ = 0): history records marked
    train/skipped."""
    return sum(1 for h in run["history"] if h.get("train/skipped") == 1)


def frame_of(runs: list[dict]) -> pd.DataFrame:
    fin = results.final_frame(runs)
    fin["skipped"] = [skipped_updates(r) for r in runs]
    fin["n_updates"] = [sum(1 for h in r["history"] if "train/samples_seen" in h) for r in runs]
    return fin


def frame_00(runs):
    fin = frame_of(runs)
    fin["is_error"] = (fin["exact/kl"] - fin["is/kl@4096"]).abs()  # |IS estimate − exact| of KL(p‖π), 4,096 samples
    unfloored = [_toy_metrics(r["arrays"]["p"], r["arrays"]["pi"]) if r["setting"] == "misspecified" else {}
                 for r in runs]  # against the two-sequence p (training used the floored p_ε)
    for k in ("kl_p_pi", "kl_pi_p", "js", "tv", "kl_pi_p_eps"):
        fin[f"p/{k}"] = [u.get(k, math.nan) for u in unfloored]
    return fin


def frame_01(runs):
    fin = frame_of(runs)
    fin["entropy_minus_a"] = fin["entropy"] - fin["base/entropy"]
    return _add_rows(fin, "a", {"E_r": "base/E_r", "rl_objective": "base/E_r", "distinct_2": "base/distinct_2"})


def frame_02(runs):
    fin = frame_01(runs)
    gap = fin[fin.divergence == "kl"].set_index(["setting", "seed"])["distinct_2"] \
        - fin[fin.divergence == "rkl"].set_index(["setting", "seed"])["distinct_2"]
    gap = gap.rename("distinct_2").reset_index().assign(divergence="kl−rkl")
    return pd.concat([fin, gap], ignore_index=True)


def frame_04(runs):
    return _add_rows(frame_of(runs), "p", {"eval/constraint_err": 0.0})


def frame_05(runs):
    return _add_rows(frame_of(runs), "a", {"eval/rl_objective": "base/r"})


def frame_06(runs):
    return _add_rows(frame_of(runs), "p", {"H_min": "H_p"})


def frame_07(runs):
    fin = frame_of(runs)
    cols = ["entities", "entities_ge1", "entity_precision", "rougeL", "rouge2", "distinct_2", "self_bleu_4"]
    return _add_rows(fin, "a", {f"heldout/{c}": f"base/heldout/{c}" for c in cols})


def frame_03_long(runs):
    """frame_of plus a row "a" per seed whose ref/kl is the run's KL(p‖π) before its first update (π = a: −log Ẑ
    of the reference sample), so that "kl < a" on ref/kl reads "training lowered KL(p‖π)"."""
    fin = frame_of(runs)
    fin["ref_kl_start"] = [next(h["ref/kl"] for h in r["history"] if h.get("ref/kl") is not None) for r in runs]
    return _add_rows(fin, "a", {"ref/kl": "ref_kl_start"})


def last_batches_kl(run: dict, n: int = 5) -> float:
    """Mean importance-sampled KL(p‖π) of the last n training batches (samples of π, running Ẑ_c)."""
    v = [h["div/kl_p_pi"] for h in run["history"] if h.get("div/kl_p_pi") is not None]
    return sum(v[-n:]) / len(v[-n:]) if v else math.nan


def frame_08(runs):
    fin = frame_of(runs)
    fin["kl_p_pi_last5"] = [last_batches_kl(r) for r in runs]
    cols = [f"{s}/{m}" for s in ("stdlib_test", "humaneval") for m in ("compile", "pep8", "distinct_2", "length")]
    return _add_rows(fin, "a", {c: f"base/{c}" for c in cols})


BETAS = {"beta0.1": "β = 0.1", "beta0.3": "β = 0.3", "beta1": "β = 1"}
SIZES = {s: s for s in ("ladder-xs", "ladder-s", "base", "ladder-l")}  # 0.17M, 0.78M, 2.66M, 5.92M parameters
TASKS_03 = {t: t for t in ("science", "politics", "rare-word", "amazing", "positive", "negative")}
TASKS_04 = {t: t for t in ("female", "professions", "sports+female", "science+female")}
DIVS = ("kl", "rkl", "js", "tv")


def _each(template: str) -> tuple[str, ...]:
    """'{d} > a' for every divergence."""
    return tuple(template.format(d=d) for d in DIVS)


def scalar_claims(betas: dict) -> tuple[Claim, ...]:
    """The claims of 01 (p ∝ a·exp(r/β)) at each β of `betas` {setting value: label}: the cpu preset's three β and
    the SmolLM2 presets' one."""
    return (
        Claim("alignment", "alignment rkl ≥ js ≈ tv > kl", "E_π[r]", per_setting(betas, "E_r", ALIGN)),
        Claim("diversity", "diversity kl ≥ js ≈ tv > rkl", "Distinct-2", per_setting(betas, "distinct_2", DIVERSE)),
        Claim("js_kl", "js reaches a lower KL(p‖π) than kl", "KL(p‖π) (IS from a)",
              per_setting(betas, "kl_p_pi", "js < kl"), digits=2),
        Claim("rl", "rkl-DPG is KL-regularised RL: J rises from J(a) and is highest for rkl", "J = E_π[r] − β·KL(π‖a)",
              per_setting(betas, "rl_objective", ("rkl > a", "rkl > js", "rkl > tv", "rkl > kl"))),
    )


EXPERIMENTS = [
    Experiment("00", "toy_exact", "00 toy (exact)", "cases", frame=frame_00, claims=(
        Claim("", "forward KL covers both modes, reverse KL seeks one", "mass on the minor mode", (
            Case("misspecified", "mass/minor_mode", ("kl > rkl",), where=(("setting", "misspecified"),)),)),
        Claim("", "JS and TV lie in between", "mass on the minor mode", (
            Case("js", "mass/minor_mode", ("kl > js > rkl",), where=(("setting", "misspecified"),)),
            Case("tv", "mass/minor_mode", ("kl > tv > rkl",), where=(("setting", "misspecified"),)))),
        Claim("", "the α-family interpolates forward → reverse KL", "mass on forbidden sequences", (
            Case("α = 0 … 1", "mass/off_target",
                 ("alpha=0.0 ≥ alpha=0.25 ≥ alpha=0.5 ≥ alpha=0.75 ≥ alpha=1.0", "alpha=0.0 > alpha=1.0"),
                 where=(("setting", "misspecified"),)),)),
        Claim("", "importance sampling from π is blind to mass π dropped",
              "|IS − exact| of KL(p_ε‖π), 4,096 samples of π", (
            Case("misspecified", "is_error", ("rkl > kl", "rkl > js"), where=(("setting", "misspecified"),)),)),
    )),
    Experiment("01", "scalar_preference", "01 scalar (3 β)", "β", frame=frame_01, claims=scalar_claims(BETAS)),
    Experiment("02", "model_size_scaling", "02 sizes (4)", "sizes", frame=frame_02, claims=(
        Claim("alignment", "alignment rkl ≥ js ≈ tv > kl, at every size", "E_π[r]", per_setting(SIZES, "E_r", ALIGN)),
        Claim("diversity", "diversity kl ≥ js ≈ tv > rkl, at every size", "Distinct-2",
              per_setting(SIZES, "distinct_2", DIVERSE)),
        Claim("js_kl", "js reaches a lower KL(p‖π) than kl", "KL(p‖π) (IS from a)",
              per_setting(SIZES, "kl_p_pi", "js < kl"), digits=2),
        Claim("rl", "rkl-DPG is KL-regularised RL: J rises from J(a) and is highest for rkl", "J = E_π[r] − β·KL(π‖a)",
              per_setting(SIZES, "rl_objective", ("rkl > a", "rkl > js", "rkl > tv", "rkl > kl"))),
        Claim("", "alignment rises with model size", "E_π[r], sizes paired by seed", tuple(
            Case(d, "E_r", ("ladder-l > base > ladder-s > ladder-xs",), where=(("divergence", d),), by="setting")
            for d in DIVS)),
        Claim("", "rkl pays in diversity, more so for larger models", "Distinct-2 of kl minus that of rkl", (
            Case("kl − rkl", "distinct_2", ("ladder-l > base > ladder-s > ladder-xs",),
                 where=(("divergence", "kl−rkl"),), by="setting"),)),
    )),
    Experiment("03", "pointwise_constraints", "03 pointwise (6)", "tasks", claims=(
        Claim("alignment", "alignment rkl ≥ js ≈ tv > kl", "E_π[b]", per_setting(TASKS_03, "eval/align/b", ALIGN)),
        Claim("diversity", "diversity kl ≥ js ≈ tv > rkl", "Distinct-2",
              per_setting(TASKS_03, "eval/distinct/2", DIVERSE)),
        Claim("js_kl", "js reaches a lower KL(p‖π) than kl", "KL(p‖π)",
              per_setting(TASKS_03, "ref/kl", "js < kl"), digits=2),
        Claim("", "a higher floor ε makes rkl's constraint weaker (science)", "E_π[b] of rkl; ε = −10, −3, −1", (
            Case("science", "eval/align/b", ("science > science_floor-3 > science_floor-1",),
                 where=(("divergence", "rkl"),), by="setting"),)),
    )),
    Experiment("04", "distributional_constraints", "04 distributional (4)", "tasks", frame=frame_04, claims=(
        Claim("alignment", "alignment rkl ≥ js ≈ tv > kl", "constraint error (lower is better)",
              per_setting(TASKS_04, "eval/constraint_err", "rkl ≤ js ≈ tv < kl")),
        Claim("diversity", "diversity kl ≥ js ≈ tv > rkl", "Distinct-2",
              per_setting(TASKS_04, "eval/distinct/2", DIVERSE)),
        Claim("js_kl", "js reaches a lower KL(p‖π) than kl", "KL(p‖π)",
              per_setting(TASKS_04, "ref/kl", "js < kl"), digits=2),
        Claim("", "the moments reach their targets (constraint error ≈ p's, 0)", "constraint error",
              per_setting(TASKS_04, "eval/constraint_err", _each("{d} ≈ p"))),
    )),
    Experiment("05", "sentiment", "05 sentiment (2)", "forms", frame=frame_05, claims=(
        Claim("alignment", "alignment rkl ≥ js ≈ tv > kl", "E_π[r] (scalar), P_π(r ≥ 0.8) (binary)",
              (Case("scalar", "eval/align/r", (ALIGN,), where=(("setting", "scalar"),)),
               Case("binary", "eval/align/pos", (ALIGN,), where=(("setting", "binary"),)))),
        Claim("diversity", "diversity kl ≥ js ≈ tv > rkl", "Distinct-2",
              per_setting({"scalar": "scalar", "binary": "binary"}, "eval/distinct/2", DIVERSE)),
        Claim("js_kl", "js reaches a lower KL(p‖π) than kl", "KL(p‖π)",
              per_setting({"scalar": "scalar", "binary": "binary"}, "ref/kl", "js < kl"), digits=2),
        Claim("rl", "rkl-DPG is KL-regularised RL: J rises from J(a) and is highest for rkl", "J = E_π[r] − β·KL(π‖a)",
              per_setting({"scalar": "scalar"}, "eval/rl_objective", ("rkl > a", "rkl > js", "rkl > tv", "rkl > kl"))),
    )),
    Experiment("06", "well_specified", "06 well-specified", "distances", frame=frame_06, claims=(
        Claim("alignment", "alignment (closeness to p) rkl ≥ js ≈ tv > kl", "each distance to p (lower is closer)",
              tuple(Case(lab, m, ("rkl ≤ js ≈ tv < kl",), digits=d)
                    for lab, m, d in (("KL(p‖π)", "ref/kl", 2), ("KL(π‖p)", "eval/kl_pi_p", 2),
                                      ("JS", "exact/js", 3), ("TV", "exact/tv", 3)))),
        Claim("diversity", "diversity kl ≥ js ≈ tv > rkl", "Distinct-2",
              (Case("well", "eval/distinct/2", (DIVERSE,)),)),
        Claim("js_kl", "js reaches a lower KL(p‖π) than kl", "KL(p‖π)", (Case("well", "ref/kl", ("js < kl",)),),
              digits=2),
        Claim("entropy", "rkl's entropy collapses below H(p) and deeper than the others', then recovers more",
              "min over training of H(π) (nats; p: H(p)); then H_final − min H", (
                  Case("collapse", "H_min", ("rkl < p", "rkl < kl", "rkl < js", "rkl < tv")),
                  Case("recovery", "recovery", ("rkl > kl", "rkl > js", "rkl > tv"))), digits=1, joint=True),
    )),
    Experiment("07", "summarization", "07 summaries", "metrics", frame=frame_07, claims=(
        Claim("heldout", "the constraint rate rises on held-out contexts",
              "b rate, held-out articles (a: one evaluation)",
              (Case("held out", "heldout/entities", _each("{d} > a")),)),
        Claim("", "summaries become more faithful (tested with the relaxed b: the paper's ≥ 4 entities has base "
                  "rate 0)",
              "held-out: ≥ 1 entity, all in the source; entity precision", (
            Case("≥ 1 entity, all in source", "heldout/entities_ge1", _each("{d} > a")),
            Case("entity precision", "heldout/entity_precision", _each("{d} > a")))),
        Claim("", "ROUGE is kept", "ROUGE-L, held-out", (Case("held out", "heldout/rougeL", _each("{d} ≈ a")),)),
        Claim("alignment", "alignment rkl ≥ js ≈ tv > kl", "b rate, held-out",
              (Case("held out", "heldout/entities", (ALIGN,)),)),
        Claim("diversity", "diversity kl ≥ js ≈ tv > rkl", "Distinct-2 within each article (4 summaries)",
              (Case("held out", "heldout/distinct_2", (DIVERSE,)),)),
    )),
    Experiment("08", "code", "08 code", "sets", frame=frame_08, claims=(
        Claim("heldout", "the constraint rate rises on held-out contexts", "compile rate (a: one evaluation)", (
            Case("stdlib test", "stdlib_test/compile", _each("{d} > a")),
            Case("HumanEval", "humaneval/compile", _each("{d} > a")))),
        Claim("alignment", "alignment rkl ≥ js ≈ tv > kl", "compile rate, stdlib test",
              (Case("stdlib test", "stdlib_test/compile", (ALIGN,)),)),
        Claim("diversity", "diversity kl ≥ js ≈ tv > rkl", "Distinct-2 within each signature (4 bodies)",
              (Case("stdlib test", "stdlib_test/distinct_2", (DIVERSE,)),)),
        Claim("", "reverse KL is mode seeking: rkl writes the shortest bodies", "body length (tokens), stdlib test",
              (Case("stdlib test", "stdlib_test/length", ("rkl < kl", "rkl < js", "rkl < tv")),), digits=1),
        Claim("js_kl", "js reaches a lower KL(p‖π) than kl",
              "KL(p‖π), IS from π's own samples (last 5 training batches; blind to mass π dropped, so not decisive)",
              (Case("training", "kl_p_pi_last5", ("js < kl",)),), digits=2),
    )),
]
BY_CODE = {e.code: e for e in EXPERIMENTS}

# the longer presets: one setting each, their own verdict tables (not in the claims-at-a-glance tables, which are the
# cpu preset's)
LONGER = [
    Experiment("03", "pointwise_constraints", "03 pointwise, cpu-long (science)", "tasks", frame=frame_03_long,
               preset="cpu-long", claims=(
        Claim("", "training lowers KL(p‖π) below a's, for forward KL and for every divergence",
              "KL(p‖π) on the reference sample (a: before the first update)",
              (Case("science", "ref/kl", _each("{d} < a"), where=(("setting", "science"),)),), digits=2),
        Claim("alignment", "alignment rkl ≥ js ≈ tv > kl", "E_π[b]",
              per_setting({"science": "science"}, "eval/align/b", ALIGN)),
        Claim("diversity", "diversity kl ≥ js ≈ tv > rkl", "Distinct-2",
              per_setting({"science": "science"}, "eval/distinct/2", DIVERSE)),
        Claim("js_kl", "js reaches a lower KL(p‖π) than kl", "KL(p‖π)",
              per_setting({"science": "science"}, "ref/kl", "js < kl"), digits=2),
    )),
    *(Experiment("01", "scalar_preference", f"01 scalar, {preset} (SmolLM2-135M)", "β", frame=frame_01,
                 preset=preset, claims=scalar_claims({"beta0.1": "β = 0.1"}))
      for preset in ("cpu-smollm", "cpu-smollm-b64")),  # 01 on SmolLM2-135M: 16 or 64 samples per update
]


# 3. deciding -----------------------------------------------------------------------------------------------------

@dataclass
class Decided:
    claim: Claim
    case: Case
    links: list                # V.Link, in chain order
    verdict: str               # V.combine(links)
    values: dict               # name → per-seed values (pd.Series)
    skipped: dict = field(default_factory=dict)  # name → per-seed skipped updates, only names with any
    updates: int = 0           # updates per run (n_steps)


_CACHE: dict = {}


def experiment_data(exp: Experiment, results_dir: Path = RESULTS):
    """(frame, runs) of one experiment's committed runs at its preset (cached per results_dir)."""
    key = (exp.code, exp.preset, str(results_dir))
    if key not in _CACHE:
        runs = V.load_experiment_runs(Path(results_dir) / exp.name / exp.preset, exp.name, exp.preset)
        _CACHE[key] = ((exp.frame or frame_of)(runs), runs)
    return _CACHE[key]


def decide_case(frame: pd.DataFrame, claim: Claim, case: Case) -> Decided:
    sub = frame
    for col, val in case.where:
        sub = sub[sub[col] == val]
    if sub.empty:
        raise ValueError(f"claim {claim.text!r}, case {case.label!r}: no row with {dict(case.where)}")
    digits = claim.digits if case.digits is None else case.digits
    links = [lk for chain in case.chains for lk in V.decide_chain(sub, case.metric, chain, by=case.by, digits=digits)]
    names = list(dict.fromkeys(n for chain in case.chains for g in V.parse_chain(chain)[0] for n in g))
    values = {n: V.seed_values(sub, case.metric, n, by=case.by) for n in names}
    skipped = {}
    if "skipped" in sub.columns:
        for n in names:
            s = sub[sub[case.by] == n].set_index("seed")["skipped"].sort_index()
            if s.fillna(0).gt(0).any():
                skipped[n] = s.fillna(0).astype(int)
    n_up = sub["n_updates"].max() if "n_updates" in sub.columns else math.nan
    updates = 0 if math.isnan(n_up) else int(n_up)
    return Decided(claim, case, links, V.combine(links), values, skipped, updates)


def decide_experiment(exp: Experiment, results_dir: Path = RESULTS) -> list[Decided]:
    frame, _ = experiment_data(exp, results_dir)
    return [decide_case(frame, claim, case) for claim in exp.claims for case in claim.cases]


# 4. rendering ----------------------------------------------------------------------------------------------------

def fmt(x: float, digits: int) -> str:
    """Fixed decimals with a true minus sign; no '-0.000'."""
    return f"{round(x, digits) + 0.0:.{digits}f}".replace("-", "−")


def mean_pm(values: pd.Series, digits: int) -> str:
    """'m ± s' over seeds (ddof 1); just 'm' when every seed has the same value (a's single evaluation, p)."""
    m = float(values.mean())
    s = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return fmt(m, digits) if s == 0.0 else f"{fmt(m, digits)} ± {fmt(s, digits)}"


def _chain_text(chain: str, d: Decided, digits: int) -> str:
    groups, ops = V.parse_chain(chain)
    rels = [r for r in re.findall(r"(>=|<=|[>≥≈<≤~])", chain)]
    names = [n for g in groups for n in g]
    return " ".join(f"{n} {mean_pm(d.values[n], digits)}" + (f" {rels[i]}" if i < len(rels) else "")
                    for i, n in enumerate(names))


def what_we_see(d: Decided) -> str:
    """The case's values in the order of its chains. Chains 'x rel y' sharing one side are written once."""
    digits = d.claim.digits if d.case.digits is None else d.case.digits
    pairs = [c for c in d.case.chains if len(V.chain_links(c)) == 1]
    if len(pairs) == len(d.case.chains) > 1:
        links = [V.chain_links(c)[0] for c in pairs]
        left, rels, right = {lk[0] for lk in links}, {lk[1] for lk in links}, {lk[2] for lk in links}
        v = lambda n: f"{n} {mean_pm(d.values[n], digits)}"  # noqa: E731
        if len(right) == 1 and len(rels) == 1:
            return f"{', '.join(v(lk[0]) for lk in links)}: each {links[0][1]} {v(links[0][2])}"
        if len(left) == 1 and len(rels) == 1:
            return f"{v(links[0][0])} {links[0][1]} each of {', '.join(v(lk[2]) for lk in links)}"
    text = "; ".join(_chain_text(c, d, digits) for c in d.case.chains)
    if d.skipped:
        per = ", ".join(f"{n} {' / '.join(str(int(x)) for x in s)}" for n, s in d.skipped.items())
        text += f" (updates skipped out of {d.updates}, per seed: {per})"
    return text


def verdict_text(d: Decided) -> str:
    """'**holds**', or the verdict followed by every link that does not hold or is inconclusive, and why."""
    notes = [f"{lk.text} {lk.verdict} ({lk.reason})" for v in (V.FAILS, V.INCONCLUSIVE) for lk in d.links
             if lk.verdict == v]
    return f"**{d.verdict}**" + (": " + "; ".join(notes) if notes else "")


def verdict_table(exp: Experiment, results_dir: Path = RESULTS) -> str:
    rows, last = [], None
    for d in decide_experiment(exp, results_dir):
        first = d.claim is not last
        last = d.claim
        rows.append([d.claim.text if first else "", d.claim.metric if first else "", d.case.label,
                     what_we_see(d).replace("|", "\\|"), verdict_text(d)])
    head = ("| claim | compared on | case | mean ± std over seeds | verdict (links that do not hold) |\n"
            "|---|---|---|---|---|\n")
    return head + "".join("| " + " | ".join(r) + " |\n" for r in rows)


def summarise(ds: list[Decided], noun: str) -> str:
    """One claim's verdict over its cases: the verdict if there is one case or all agree, else each verdict with
    its cases."""
    if len(ds) == 1:
        return ds[0].verdict
    if ds[0].claim.joint:
        v = V.combine(ds)
        parts = [d.case.label for d in ds if d.verdict == v] if v != V.HOLDS else []
        return v + (f" ({', '.join(parts)})" if parts else "")
    by = {v: [d.case.label for d in ds if d.verdict == v] for v in V.VERDICTS}
    present = [v for v in V.VERDICTS if by[v]]
    if len(present) == 1:
        return f"{present[0]} ({len(ds)}/{len(ds)} {noun})"
    return "; ".join(f"{v} {len(by[v])}/{len(ds)} ({', '.join(by[v])})" for v in present)


def glance_table(codes, results_dir: Path = RESULTS) -> str:
    exps = [BY_CODE[c] for c in codes]
    decided = {e.code: decide_experiment(e, results_dir) for e in exps}
    lines = ["| claim | " + " | ".join(e.column for e in exps) + " |", "|---|" + "---|" * len(exps)]
    for key, label in GLANCE:
        cells = []
        for e in exps:
            ds = [d for d in decided[e.code] if d.claim.key == key]
            cells.append(summarise(ds, e.noun) if ds else "–")
        if any(c != "–" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# 5. the other generated regions: notebook 00's exact table, skipped updates, the target's KL(p‖a) --------------

def _toy_metrics(p_eps: list, pi: list) -> dict:
    """Exact metrics of π against the unfloored target p (p_ε restricted to its two modes and renormalised) and
    against the floored p_ε that training used; ∞ where π has mass outside p's support."""
    support = [x > 1e-3 for x in p_eps]  # the two modes; every other sequence has p_ε = e^ε·a/Z_ε < 1e-3
    zp = sum(x for x, s in zip(p_eps, support) if s)
    p = [x / zp if s else 0.0 for x, s in zip(p_eps, support)]
    zpi = sum(pi)
    pi = [x / zpi for x in pi]
    off = sum(x for x, s in zip(pi, support) if not s)
    kl_p_pi = sum(a * math.log(a / b) for a, b in zip(p, pi) if a > 0)
    kl_pi_p = math.inf if off > 0 else sum(b * math.log(b / a) for a, b in zip(p, pi) if b > 0)
    js = 0.5 * sum(b * math.log(2 * b / (a + b)) for a, b in zip(p, pi) if b > 0) \
        + 0.5 * sum(a * math.log(2 * a / (a + b)) for a, b in zip(p, pi) if a > 0)
    tv = 0.5 * sum(abs(a - b) for a, b in zip(p, pi))
    kl_pi_peps = sum(b * math.log(b / a) for a, b in zip(p_eps, pi) if b > 0)
    return {"kl_p_pi": kl_p_pi, "kl_pi_p": kl_pi_p, "js": js, "tv": tv, "kl_pi_p_eps": kl_pi_peps}


def _pm_inf(v: pd.Series, digits: int) -> str:
    return "∞" if not all(math.isfinite(x) for x in v) else mean_pm(v, digits)


def toy_table(results_dir: Path = RESULTS) -> str:
    """Notebook 00's misspecified family: the final policies against the two-sequence p and the floored p_ε."""
    frame, _ = experiment_data(BY_CODE["00"], results_dir)
    df = frame[(frame.setting == "misspecified") & frame.divergence.isin(DIVS)]
    cols = ["p/kl_p_pi", "p/kl_pi_p", "p/js", "p/tv", "p/kl_pi_p_eps"]
    means = {c: df.groupby("divergence")[c].mean() for c in cols}
    lines = ["| divergence minimised | KL(p‖π) | KL(π‖p) | JS(π, p) | TV(π, p) | KL(π‖p_ε), the floored target "
             "| mass on major / minor mode | mass on forbidden sequences |", "|---|---|---|---|---|---|---|---|"]
    for d in DIVS:
        g = df[df.divergence == d].sort_values("seed")
        cells = []
        for c in cols:
            text = _pm_inf(g[c], 3)
            finite = means[c][means[c].apply(math.isfinite)]
            best = len(finite) == len(DIVS) and means[c][d] == finite.min()
            cells.append(f"**{text}**" if best else text)
        mass = f"{fmt(g['mass/major_mode'].mean(), 2)} / {fmt(g['mass/minor_mode'].mean(), 2)}"
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {mass} | {fmt(g['mass/off_target'].mean(), 3)} |")
    return "\n".join(lines) + "\n"


def setting_order(exp: Experiment, settings) -> list:
    """Settings in the order the experiment's claims name them, then the others alphabetically."""
    named = [v for c in exp.claims for case in c.cases for col, v in case.where if col == "setting"]
    rank = {s: i for i, s in enumerate(dict.fromkeys(named))}
    return sorted(settings, key=lambda s: (rank.get(s, len(rank)), str(s)))


def skipped_table(code: str = "03", results_dir: Path = RESULTS) -> str:
    """Updates skipped per setting and divergence, per seed ('0 / 3 / 5')."""
    frame, _ = experiment_data(BY_CODE[code], results_dir)
    n = int(frame["n_updates"].max())
    lines = [f"| updates skipped (of {n}), per seed | " + " | ".join(DIVS) + " |", "|---|" + "---|" * len(DIVS)]
    for setting in setting_order(BY_CODE[code], frame["setting"].unique()):
        cells = []
        for d in DIVS:
            g = frame[(frame.setting == setting) & (frame.divergence == d)].sort_values("seed")
            cells.append(" / ".join(str(int(x)) for x in g["skipped"]) if len(g) else "–")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def skipped_runs(results_dir: Path = RESULTS) -> str:
    """One sentence per experiment with skipped updates, and the count of runs without any."""
    total, n_skip, parts = 0, 0, []
    for exp in EXPERIMENTS:
        frame, runs = experiment_data(exp, results_dir)
        total += len(runs)
        sk = frame[frame["skipped"] > 0]
        n_skip += len(sk)
        groups = sk.groupby(["setting", "seed", "skipped", "n_updates"], sort=True)["divergence"].apply(list)
        for (setting, seed, k, n), divs in groups.items():
            parts.append(f"`{exp.name}` {setting}, seed {seed}: {', '.join(results.sort_divergences(divs))} skipped "
                         f"{int(k)} of {int(n)} updates")
    return (f"Of the {total} committed `cpu` runs, {n_skip} skipped updates (a batch in which no sample had nonzero "
            f"target mass, so Ẑ = 0 and no gradient): " + "; ".join(parts) + f". The other {total - n_skip} runs "
            "made every update.\n")


def klpa_note(code: str, set_name: str, unit: str, results_dir: Path = RESULTS) -> str:
    """What E_c[−log Z_c] (the target's KL(p‖a), estimated from a's samples) covers, and what the comparison with
    the policies' KL(π‖a) needs of the contexts it leaves out."""
    _, runs = experiment_data(BY_CODE[code], results_dir)
    r0 = runs[0]
    C, k = len(r0["arrays"][f"{set_name}/rate_c"]), int(r0["config"]["eval_samples"])
    z0, kl_in = r0["final"][f"ref/{set_name}/z_zero"], r0["final"][f"ref/{set_name}/kl_p_a"]
    n_out = round(z0 * C)
    pol = [r["final"][f"{set_name}/kl_pi_a"] for r in runs]
    x = (min(pol) - (1 - z0) * kl_in) / z0  # mean −log Z_c over the left-out contexts at which the lowest run ties p
    return (f"E_c[−log Z_c] = {fmt(kl_in, 2)} nats averages the {C - n_out} of {C} {unit} in which at least one of "
            f"a's {k} samples met b. The other {n_out} ({fmt(100 * z0, 0)} %) have Ẑ_c = 0 from {k} samples and are "
            f"left out, although their −log Z_c is likely the largest, so the target's KL(p‖a) over all {C} is at "
            f"least "
            f"{fmt((1 - z0) * kl_in, 2)} nats and unknown beyond that. Every run's KL(π‖a) ({fmt(min(pol), 2)}–"
            f"{fmt(max(pol), 2)}) exceeds the target's if the left-out {unit} average −log Z_c < {fmt(x, 1)} "
            f"(a geometric-mean Z_c above {x and f'{math.exp(-x):.2g}'}); the runs cannot tell whether they do.\n")


# 6. the generated regions and the files that hold them -----------------------------------------------------------

REGIONS = {
    "glance": lambda d: glance_table([e.code for e in EXPERIMENTS if any(c.key for c in e.claims)], d),
    "glance-03-06": lambda d: glance_table(["03", "04", "05", "06"], d),
    **{e.region: (lambda e: lambda d: verdict_table(e, d))(e) for e in EXPERIMENTS + LONGER},
    "toy-00": toy_table,
    "skipped-03": lambda d: skipped_table("03", d),
    "skipped-runs": skipped_runs,
    "klpa-07": lambda d: klpa_note("07", "heldout", "held-out articles", d),
    "klpa-08": lambda d: klpa_note("08", "stdlib_test", "stdlib test signatures", d),
}
_REGION = re.compile(r"(<!-- claims:begin (\S+) -->\n)(.*?)(<!-- claims:end -->)", re.S)


def rewrite(text: str, results_dir: Path = RESULTS, *, where: str = "text") -> str:
    """`text` with every generated region rebuilt. ValueError on an unknown region name or an unclosed marker."""
    begins = re.findall(r"<!-- claims:begin (\S+) -->", text)
    if len(begins) != text.count("<!-- claims:end -->"):
        raise ValueError(f"{where}: {len(begins)} 'claims:begin' markers but {text.count('<!-- claims:end -->')} "
                         "'claims:end' markers")
    unknown = [n for n in begins if n not in REGIONS]
    if unknown:
        raise ValueError(f"{where}: unknown generated regions {unknown}; allowed: {sorted(REGIONS)}")
    return _REGION.sub(lambda m: m.group(1) + REGIONS[m.group(2)](results_dir) + m.group(4), text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="print a diff and exit 1 if a region is out of date")
    ap.add_argument("--results", type=Path, default=RESULTS, help="results root (default: data/results)")
    args = ap.parse_args(argv)
    stale = 0
    for name in FILES:
        path = REPO / name
        old = path.read_text(encoding="utf-8")
        new = rewrite(old, args.results, where=name)
        if new == old:
            continue
        stale += 1
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), name, name))
        else:
            path.write_text(new, encoding="utf-8")
            print(f"rewrote {name}")
    if args.check and stale:
        print(f"{stale} file(s) out of date: run `make claims`")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


# 7. numbers quoted in the prose: every "m ± s" of a results section is a mean ± std of that experiment's runs ----

_QUOTE = re.compile(r"(?<![\d.])([−-]?\d+\.(\d+)) ± (\d+\.\d+)")
_SECTION = re.compile(r"^#{2,3} (0\d) · ", re.M)


def _stats_strings(exp: Experiment, digits: int, results_dir: Path) -> set:
    """Every 'm ± s' (digits decimals) of the experiment: each numeric column's mean ± std over seeds per
    (setting, divergence), and per setting over the seeds' shared values (a's and the target's); rounded from the
    value, or from the value already rounded to one more decimal (a number read off a 3-decimal table)."""
    key = ("stats", exp.code, digits, str(results_dir))
    if key not in _CACHE:
        frame, _ = experiment_data(exp, results_dir)
        num = [c for c in frame.columns if c not in ("setting", "divergence", "seed")
               and pd.api.types.is_numeric_dtype(frame[c])]
        out = set()
        for by, df in ((["setting", "divergence"], frame), (["setting"], frame.drop_duplicates(["setting", "seed"]))):
            g = df.groupby(by)[num]
            mu, sd = g.mean(), g.std(ddof=1)
            for c in num:
                for m, s in zip(mu[c], sd[c]):
                    if isinstance(m, float) and math.isfinite(m) and isinstance(s, float) and math.isfinite(s):
                        out.add(f"{fmt(m, digits)} ± {fmt(s, digits)}")  # rounded once, or from a table
                        out.add(f"{fmt(round(m, digits + 1), digits)} ± {fmt(round(s, digits + 1), digits)}")
        _CACHE[key] = out
    return _CACHE[key]


def unmatched_quotes(text: str, results_dir: Path = RESULTS) -> list[str]:
    """The 'm ± s' quotes of each '## 0N · ' / '### 0N · ' section of `text` that are not a mean ± std of
    experiment 0N's runs at the quoted precision (with the section's heading, for the message)."""
    bad = []
    heads = list(_SECTION.finditer(text))
    for i, h in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        nxt = re.search(r"^#{1,2} (?!0\d · )", text[h.end():end], re.M)  # a section that is not an experiment
        body = text[h.start():h.end() + nxt.start()] if nxt else text[h.start():end]
        exp = BY_CODE[h.group(1)]
        for m in _QUOTE.finditer(body):
            q = f"{m.group(1).replace('-', '−')} ± {m.group(3)}"
            if q not in _stats_strings(exp, len(m.group(2)), results_dir):
                bad.append(f"{h.group(1)}: {q}")
    return bad
