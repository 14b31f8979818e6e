"""fdpg_core.kit.results: result files round-trip, frames, mean ± std, colours, tables and figures."""
import json
import math

import matplotlib
import pytest

matplotlib.use("Agg")  # noqa: E402  (tests draw off-screen; pyplot is imported after the backend is set)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

from fdpg_core.kit import results  # noqa: E402
from fdpg_core.divergences import DIVERGENCES, alpha_divergence  # noqa: E402


def _history(n, B, scale):
    out = [{"step": s, "train/loss": scale * (n - s), "exact/kl": scale / (s + 1)} for s in range(n)]
    out.append({"step": n, "exact/kl": scale / (n + 1)})  # the final metrics_fn record: no train/* keys
    return out


def _write(tmp_path, B=8):
    for div, scale in (("kl", 1.0), ("js", 2.0)):
        for seed in (0, 1, 2):
            results.save_run(tmp_path, experiment="toy", divergence=div, seed=seed, setting="s", preset="smoke",
                             config={"batch_size": B, "lr": 1e-3}, history=_history(3, B, scale * (1 + seed)),
                             final={"exact/kl": scale * (1 + seed), "inf": math.inf}, arrays={"pi": [0.5, 0.5]})


def test_save_load_round_trip_and_file_names(tmp_path):
    _write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir())[:2] == ["toy__s__js__seed0.json", "toy__s__js__seed1.json"]
    runs = results.load_runs(tmp_path)
    assert len(runs) == 6 and not list(tmp_path.glob("*.tmp"))
    r = runs[0]
    assert (r["experiment"], r["setting"], r["divergence"], r["seed"], r["preset"]) == ("toy", "s", "js", 0, "smoke")
    assert r["final"] == {"exact/kl": 2.0, "inf": None}  # non-finite -> null (strict JSON)
    assert r["arrays"]["pi"] == [0.5, 0.5] and r["history"][-1] == {"step": 3, "exact/kl": 0.5}
    json.loads((tmp_path / "toy__s__kl__seed2.json").read_text())  # plain, strict JSON
    path = results.save_run(tmp_path, experiment="toy", divergence="kl", seed=9, config={"batch_size": 1},
                            history=[], final={"x": 1 / 3, "n": 12345678901})
    assert json.loads(path.read_text())["final"] == {"x": 0.3333333, "n": 12345678901}  # 7 significant digits
    path.unlink()
    assert results.run_filename(alpha_divergence(0.25).name, 3) == "alpha0.25__seed3.json"
    assert results.run_filename("js", 1, "s", experiment="toy", fingerprint="abc") == "toy__s__js__seed1__abc.json"


def test_bad_input_raises(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        results.save_run(tmp_path, experiment="x", divergence="kl", seed=0, config={}, history=[], final={})
    with pytest.raises(ValueError, match="cannot store"):
        results.save_run(tmp_path, experiment="x", divergence="kl", seed=0, config={"batch_size": 1}, history=[],
                         final={"f": object()})
    with pytest.raises(ValueError, match="no result JSON"):
        results.load_runs(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"no colour for divergence 'kld'.*'js'"):
        results.divergence_color("kld")


def test_history_frame_samples_seen_and_mean_std(tmp_path):
    _write(tmp_path, B=8)
    runs = results.load_runs(tmp_path)
    h = results.history_frame(runs)
    assert len(h) == 6 * 4
    assert (h["samples_seen"] == 8 * h["step"]).all()  # θ_s has seen s batches
    assert h.loc[h.step == 3, "train/loss"].isna().all() and h["exact/kl"].notna().all()
    fin = results.final_frame(runs)
    st = results.mean_std(fin, ["setting", "divergence"], ["exact/kl"])
    assert list(st["divergence"]) == ["kl", "js"]  # kit order, not alphabetical
    kl = st[st.divergence == "kl"].iloc[0]
    assert (kl["exact/kl_mean"], kl["exact/kl_std"], kl["n_seeds"]) == (2.0, 1.0, 3)  # values 1, 2, 3; ddof = 1
    one = results.mean_std(fin[fin.seed == 0], "divergence", ["exact/kl"])
    assert (one["exact/kl_std"] == 0).all() and (one["n_seeds"] == 1).all()
    assert list(results.mean_std(fin, "divergence", ["exact/kl"], order={"divergence": ["js", "kl"]})["divergence"]) \
        == ["js", "kl"]
    txt = results.format_mean_std(st, ["exact/kl"], digits=2)
    assert list(txt.columns) == ["setting", "divergence", "exact/kl"]
    assert txt["exact/kl"].tolist() == ["2.00 ± 1.00", "4.00 ± 2.00"]
    assert results.format_mean_std(one, ["exact/kl"], digits=1)["exact/kl"].tolist() == ["1.0", "2.0"]


def test_colours_labels_and_order():
    assert set(DIVERGENCES) <= set(results.DIVERGENCE_COLORS), "every table row needs a kit-wide colour"
    cols = [results.divergence_color(k) for k in DIVERGENCES]
    assert len(set(cols)) == len(cols)
    r0, _, b0 = to_rgb(results.divergence_color(alpha_divergence(0.0).name))
    r1, _, b1 = to_rgb(results.divergence_color(alpha_divergence(1.0).name))
    assert b0 > r0 and r1 > b1  # α = 0 bluish (forward KL), α = 1 reddish (reverse KL)
    assert results.divergence_label("alpha=0.25") == "α = 0.25" and "KL(p‖π)" in results.divergence_label("kl")
    assert results.sort_divergences(["alpha=0.5", "tv", "zzz", "alpha=0.0", "kl", "tv"]) == \
        ["kl", "tv", "alpha=0.0", "alpha=0.5", "zzz"]


def test_plot_curves_draws_the_mean_with_the_kit_colour(tmp_path):
    _write(tmp_path, B=8)
    h = results.history_frame(results.load_runs(tmp_path))
    fig, ax = plt.subplots()
    results.plot_curves(ax, h, "train/loss", logy=True)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    kl = lines[results.divergence_label("kl")]
    assert list(kl.get_xdata()) == [0, 8, 16]  # NaN rows (the final record) dropped
    assert list(kl.get_ydata()) == pytest.approx([3 * 2.0, 2 * 2.0, 1 * 2.0])  # mean over seeds of scale·(n−s)
    assert kl.get_color() == results.DIVERGENCE_COLORS["kl"]
    assert len(ax.collections) == 2 and ax.get_xlabel() == "samples seen"  # one ± std band per divergence
    paths = results.save_figure(fig, tmp_path / "figs", "f")
    first = paths[1].read_bytes()
    results.save_figure(fig, tmp_path / "figs", "f")
    assert paths[0].stat().st_size > 1000 and paths[1].read_bytes() == first  # PDF has no timestamp
    plt.close(fig)


def test_tables_and_output_dirs(tmp_path, monkeypatch):
    import pandas as pd

    df = pd.DataFrame({"name": ["a|b", "c"], "x": [-0.0001, float("nan")]})
    md = results.to_markdown(df, digits=3)
    assert md.splitlines() == ["| name | x |", "|---|---|", "| a\\|b | 0.000 |", "| c | – |"]
    csv, mdp = results.write_table(df, tmp_path / "t", "tab")
    assert pd.read_csv(csv)["x"].iloc[0] == -0.0001 and mdp.read_text() == md
    monkeypatch.setattr(results, "REPO_ROOT", tmp_path)
    out, fig = results.output_dirs("data/results/x/cpu", None, "x")
    assert out == tmp_path / "data/results/x/cpu" and out.is_dir()
    assert fig.is_dir() and fig.name.startswith("fdpg_x_figures_")
    fig.rmdir()



def test_show_table_displays_html_with_the_markdown_as_text(capsys, monkeypatch):
    """In a notebook: one display of text/html (cells as in the Markdown, 'm ± s' kept) and text/plain (the pipe
    table, what logs and the notebook tests read); outside IPython the pipe table is printed."""
    import pandas as pd
    import IPython
    import IPython.display

    df = pd.DataFrame({"name": ["a<b", "c"], "x": [-0.0001, float("nan")], "m": ["0.25 ± 0.01", "1.00"]})
    html = results.table_html(df, digits=2, title="t & u")
    assert "<table" in html and "<b>t &amp; u</b>" in html and "a&lt;b" in html
    assert [c in html for c in ("<td>0.00</td>", "<td>–</td>", "<td>0.25 ± 0.01</td>")] == [True] * 3
    results.show_table(df, digits=2, title="t")
    assert capsys.readouterr().out == "t\n" + results.to_markdown(df, digits=2)
    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw: shown.append((obj, raw)))
    results.show_table(df, digits=2)
    assert shown == [({"text/html": results.table_html(df, digits=2), "text/plain": results.to_markdown(df, 2)},
                      True)] and capsys.readouterr().out == ""


def test_panel_grid_and_seeds_phrase():
    import pandas as pd

    fig, axes = results.panel_grid(4)
    assert len(axes) == 4 and len(fig.axes) == 4  # 2 rows of ≤ 3; the unused cell removed
    assert tuple(fig.get_size_inches()) == pytest.approx((results.FIG_WIDTH, 6.4))
    assert {round(ax.get_subplotspec().colspan.start) for ax in axes} == {0, 1, 2}
    plt.close(fig)
    for bad in [dict(n=0), dict(n=2, ncols=4), dict(n=2, width=16)]:
        with pytest.raises(ValueError, match="allowed"):
            results.panel_grid(**bad)
    df = pd.DataFrame({"setting": ["s"] * 5, "divergence": ["kl"] * 3 + ["js"] * 2, "seed": [0, 1, 2, 0, 1]})
    assert results.seeds_phrase(df) == "mean ± 1 std over 2–3 seeds"
    assert results.seeds_phrase(df[df.divergence == "kl"]) == "mean ± 1 std over 3 seeds"
    assert results.seeds_phrase(df[df.seed == 0]) == "one seed, no spread shown"
    with pytest.raises(ValueError, match="seed"):
        results.seeds_phrase(df.drop(columns="seed"))


# ------------------------------------------------------------------------ fingerprints: runs that cannot mix
PARAMS = {"seed": 0, "n_seeds": 3, "divergences": ["kl", "js"], "lr": 1e-4, "n_steps": 10, "betas": [0.1],
          "out_dir": "a", "fig_dir": "b", "preset": "cpu", "rerun": False, "torch_threads": 1, "device": "cpu",
          "smooth": 4}
SWEEP = ["seed", "n_seeds", "divergences", "betas"]


def test_fingerprint_covers_what_changes_the_numbers_only():
    fp = results.fingerprint(PARAMS, sweep=SWEEP)
    assert len(fp) == 12 and int(fp, 16) >= 0
    same = {"out_dir": "elsewhere", "fig_dir": None, "preset": "smoke", "rerun": True, "torch_threads": 2,
            "device": "cuda", "smooth": 1, "divergences": ["rkl"], "seed": 7, "n_seeds": 1, "betas": [1.0]}
    for k, v in same.items():  # where files go, how they are shown, and which runs to make: same fingerprint
        assert results.fingerprint({**PARAMS, k: v}, sweep=SWEEP) == fp, k
    assert results.fingerprint({**PARAMS, "n_steps": 10.0}, sweep=SWEEP) == fp  # 10 and 10.0 are one value
    for k, v in {"lr": 2e-4, "n_steps": 11}.items():
        assert results.fingerprint({**PARAMS, k: v}, sweep=SWEEP) != fp, k
    assert results.fingerprint({**PARAMS, "new_knob": 1}, sweep=SWEEP) != fp  # unknown names count: conservative
    with pytest.raises(ValueError, match=r"sweep names \['sizes'\] are not parameters"):
        results.fingerprint(PARAMS, sweep=["sizes"])


def test_an_added_parameter_at_its_default_keeps_the_fingerprint():
    """A parameter a notebook gained after its runs were saved: at its default the old runs keep their fingerprint;
    any other value is a different run."""
    fp = results.fingerprint(PARAMS, sweep=SWEEP)
    added = {"precision": "fp32", "prompt": None}
    assert results.fingerprint({**PARAMS, **added}, sweep=SWEEP, added=added) == fp
    for k, v in {"precision": "bf16", "prompt": "Write a short movie review."}.items():
        assert results.fingerprint({**PARAMS, **added, k: v}, sweep=SWEEP, added=added) != fp, k
    assert results.fingerprint({**PARAMS, **added}, sweep=SWEEP) != fp  # not declared as added: it counts
    with pytest.raises(ValueError, match=r"added names \['nope'\] are not parameters"):
        results.fingerprint(PARAMS, sweep=SWEEP, added={"nope": 1})


def _save(d, experiment, setting, div, seed, fp, value=1.0):
    return results.save_run(d, experiment=experiment, divergence=div, seed=seed, setting=setting, preset="cpu",
                            fingerprint=fp, params={"lr": value}, config={"batch_size": 4}, history=[],
                            final={"x": value})


def test_runs_of_other_experiments_and_parameters_do_not_mix(tmp_path, capsys):
    _save(tmp_path, "toy_exact", "well", "kl", 0, "aaa", 1.0)
    _save(tmp_path, "well_specified", "well", "kl", 0, "bbb", 2.0)  # same setting, divergence and seed: no clash
    _save(tmp_path, "toy_exact", "well", "kl", 0, "ccc", 3.0)  # the same run made with other parameters
    _save(tmp_path, "toy_exact", "well", "js", 0, "aaa", 4.0)
    assert len(list(tmp_path.glob("*.json"))) == 4
    runs = results.load_runs(tmp_path, experiment="toy_exact", fingerprint="aaa")
    assert sorted(r["final"]["x"] for r in runs) == [1.0, 4.0]
    assert "2 run(s) of toy_exact with parameters aaa" in capsys.readouterr().out
    runs = results.load_runs(tmp_path, experiment="toy_exact", fingerprint="aaa", keys=[("well", "js", 0)])
    assert [r["final"]["x"] for r in runs] == [4.0]
    out = capsys.readouterr().out
    assert "skipped 3 (1 other experiment, 1 other parameters, 1 not asked for)" in out
    assert [r["final"]["x"] for r in results.load_runs(tmp_path, experiment="well_specified")] == [2.0]
    with pytest.raises(ValueError, match="no result JSON of 'code'.*skipped 4"):
        results.load_runs(tmp_path, experiment="code")
    assert len(results.load_runs(tmp_path)) == 4  # no filter: every run, as before


def test_corrupt_or_foreign_json_is_skipped_with_a_warning_naming_it(tmp_path):
    _save(tmp_path, "toy_exact", "well", "kl", 0, "aaa")
    (tmp_path / "torn.json").write_text('{"experiment": "toy_ex')
    (tmp_path / "other.json").write_text('{"name": "a config of something else"}')
    with pytest.warns(UserWarning) as rec:
        runs = results.load_runs(tmp_path, experiment="toy_exact", verbose=False)
    assert len(runs) == 1
    msgs = " ".join(str(w.message) for w in rec)
    assert "torn.json: not a readable JSON file" in msgs and "other.json: not a run file" in msgs


def test_find_run_reuses_only_the_same_experiment_parameters_and_run(tmp_path):
    path = _save(tmp_path, "toy_exact", "well", "kl", 0, "aaa")
    kw = dict(experiment="toy_exact", fingerprint="aaa", setting="well", divergence="kl", seed=0)
    assert results.find_run(tmp_path, **kw) == path
    for k, v in {"fingerprint": "bbb", "experiment": "code", "seed": 1, "divergence": "js", "setting": "x"}.items():
        assert results.find_run(tmp_path, **{**kw, k: v}) is None, k
    path.write_text(path.read_text()[:40])  # torn by a crash: not reused, retrained
    with pytest.warns(UserWarning, match="not a readable JSON"):
        assert results.find_run(tmp_path, **kw) is None


def test_find_run_refuses_to_train_while_rendering(tmp_path, monkeypatch):
    """With FDPG_NO_TRAIN set (a rendering), a run that is not saved is an error naming it, never a retraining."""
    path = _save(tmp_path, "toy_exact", "well", "kl", 0, "aaa")
    kw = dict(experiment="toy_exact", fingerprint="aaa", setting="well", divergence="kl", seed=0)
    monkeypatch.setenv(results.NO_TRAIN_ENV, "1")
    assert results.find_run(tmp_path, **kw) == path  # saved: reused as always
    with pytest.raises(RuntimeError, match="never trains.*toy_exact__well__kl__seed1__aaa.json"):
        results.find_run(tmp_path, **{**kw, "seed": 1})
    monkeypatch.setenv(results.NO_TRAIN_ENV, "0")
    assert results.find_run(tmp_path, **{**kw, "seed": 1}) is None


def test_records_round_trip_keyed_by_the_parameters_and_skip_corrupt_files(tmp_path):
    params = {"n_ref": 64, "problem_seed": 0, "base_model": None, "out_dir": "x"}
    data = {"log_Z": -1.23456789, "texts": ["a b", "c"], "inf": math.inf}
    path = results.save_record(tmp_path, "reference", "toy-a", params=params, data=data)
    fp = results.fingerprint(params)
    assert path == tmp_path / "reference" / f"toy-a-{fp}.json" and not list(tmp_path.rglob("*.tmp"))
    got = results.load_record(tmp_path, "reference", "toy-a", params=params)
    assert got == {"log_Z": -1.234568, "texts": ["a b", "c"], "inf": None}  # stored like a run: 7 digits, inf → None
    # where files go does not change the record; every other parameter does
    assert results.load_record(tmp_path, "reference", "toy-a", params={**params, "out_dir": "y"}) == got
    assert results.load_record(tmp_path, "reference", "toy-a", params={**params, "n_ref": 65}) is None
    assert results.load_record(tmp_path, "reference", "toy-b", params=params) is None
    path.write_text(path.read_text()[:30])  # torn by a crash: skipped with a warning naming the file
    with pytest.warns(UserWarning, match=f"toy-a-{fp}.json: not a readable JSON"):
        assert results.load_record(tmp_path, "reference", "toy-a", params=params) is None
    path.write_text(json.dumps({"kind": "reference", "name": "other", "fingerprint": fp, "data": {}}))
    with pytest.warns(UserWarning, match="not a reference record 'toy-a'"):
        assert results.load_record(tmp_path, "reference", "toy-a", params=params) is None
    with pytest.raises(ValueError, match="name='a/b'"):
        results.record_path(tmp_path, "reference", "a/b", fp)
