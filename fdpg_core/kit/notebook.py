"""Running and checking the kit's notebooks (papermill + nbval), used by scripts/run_notebooks.py and the tests.

    run_notebook(path, output_path, parameters)  papermill with the kit's kernel environment
    run_each(notebooks, fn, what)                  fn(nb) for each, timed, every failure reported
    parameters_cell(nb)                            the cell tagged `parameters` and its {name: (value, comment)}
    parameters(namespace, name)                    a notebook's parameters, checked and parsed (its first cell)
    preset_path(name, preset)                      notebooks/params/<name>.<preset>.yaml
    preset_values(name, preset)                    the parameters a preset runs with (defaults + params/*.yaml)
    preset_fingerprint(name, preset)               (experiment, fingerprint) of the runs a preset makes
    clear_outputs(nb)                              outputs cleared, except cells marked `# NBVAL_CHECK_OUTPUT`
    copy_checked_outputs(nb, executed)             take those marked cells' outputs from an executed copy
    rendered(nb, executed, name, ...)              an executed cpu-preset copy made committable (a rendering)
    render_hash(nb, name) / render_problems(nb, name)  what a rendering is of, and whether it is still current

The kernel is the venv's `python3` kernelspec: jupyter_client launches it with the *calling* process's
sys.executable, so run these from the venv's python. The kernel inherits HF_HUB_OFFLINE=1,
TOKENIZERS_PARALLELISM=false and PYTHONPATH=<repo root> (so `import fdpg_core` works from any cwd).

Committed notebooks carry the outputs of their cpu preset, rendered from the committed results by
scripts/render_notebooks.py (`make render`): no run is trained (FDPG_NO_TRAIN=1, see results.find_run), the
parameters cell keeps the notebook's own smoke defaults, volatile metadata is dropped, a note cell says how they were
made, and metadata.fdpg_render.hash (`render_hash`) covers the notebook's cells, its cpu preset file and every file in
the preset's out_dir, so a test can tell a stale rendering without running anything (`render_problems`).
`pytest --nbval-lax` compares only the cells marked `# NBVAL_CHECK_OUTPUT` with their stored output, digit for digit,
so only a cell whose output is exact (an enumeration, the same on every CPU and at every preset) carries the mark.
"""
from __future__ import annotations

import ast
import copy
import difflib
import hashlib
import json
import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
RENDER_KEY = "fdpg_render"  # notebook metadata of a rendering: {"preset": "cpu", "hash": render_hash(...)}
NOTE_ID = "rendered-note"  # id of the markdown cell a rendering adds after the title
RENDER_PRESET = "cpu"

__all__ = ["REPO_ROOT", "NOTEBOOK_DIR", "CHECK_MARK", "kernel_env", "list_notebooks", "run_notebook", "run_each",
           "parameters_cell", "parameter_types", "parameters", "preset_path", "preset_file", "preset_values",
           "preset_fingerprint", "clear_outputs", "copy_checked_outputs", "RENDER_KEY", "RENDER_PRESET", "NOTE_ID",
           "render_hash", "rendered", "render_problems"]


def kernel_env(base: dict | None = None) -> dict:
    """Environment for kernels: offline HF, no tokenizer threads, the repo root on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONHASHSEED", "0")
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in paths:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + paths)
    return env


def list_notebooks(only=None) -> list[Path]:
    """notebooks/NN_*.ipynb in order; `only` = prefixes or names to keep (e.g. ['00', '01_scalar'])."""
    nbs = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        nbs = [p for p in nbs if any(p.stem.startswith(o) or p.stem == o for o in only)]
        if not nbs:
            raise ValueError(f"no notebook matches {list(only)}; allowed: "
                             f"{[p.stem for p in sorted(NOTEBOOK_DIR.glob('[0-9][0-9]_*.ipynb'))]}")
    return nbs


def run_notebook(path, output_path, parameters: dict | None = None, *, cwd=None, log_output: bool = False,
                 timeout: int | None = None):
    """Execute `path` with papermill (kernel python3) into `output_path`; returns the executed notebook.

    The kernel's cwd is the notebook's folder (as in JupyterLab and nbval) unless `cwd` is given.
    Raises papermill.PapermillExecutionError if a cell fails (the partial output is still written).
    """
    import papermill as pm

    import tempfile

    from traitlets.config import Config

    path = Path(path)
    old = dict(os.environ)
    os.environ.update(kernel_env())  # the kernel inherits the papermill process's environment
    # the kernel talks over Unix sockets in a private temp dir, not TCP ports: kernels started side by side (e.g.
    # two test workers) can never pick the same port
    with tempfile.TemporaryDirectory(prefix="fdpg_kernel_") as sockets:
        ipc = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
        try:
            return pm.execute_notebook(str(path), str(output_path), parameters=parameters or {},
                                       kernel_name="python3", cwd=str(cwd or path.parent), progress_bar=False,
                                       log_output=log_output, execution_timeout=timeout, config=ipc)
        finally:
            os.environ.clear()
            os.environ.update(old)


def run_each(notebooks, fn, what: str) -> list[str]:
    """Call fn(nb) for every notebook in turn, printing 'ok' or 'FAILED' with its time (and fn's returned text);
    a notebook that raises is reported and the next one still runs. Prints a last line that says `what` was done
    (e.g. 'rendered') or which failed; returns the names of the failed notebooks."""
    import time

    failed, t_all = [], time.perf_counter()
    for nb in notebooks:
        t0 = time.perf_counter()
        try:
            detail = fn(nb)
        except Exception as e:  # report every notebook, then fail
            failed.append(nb.name)
            print(f"FAILED {nb.name} ({time.perf_counter() - t0:.1f} s): {type(e).__name__}: {str(e)[-2000:]}")
            continue
        print(f"ok     {nb.name} {what} in {time.perf_counter() - t0:.1f} s" + (f" {detail}" if detail else ""))
    print(f"{'FAILED: ' + ', '.join(failed) if failed else f'all {what}'} in {time.perf_counter() - t_all:.1f} s")
    return failed


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _parse_line(line: str):
    """(name, annotation or None, value, comment) of `name[: type] = <literal>  # comment`, else None."""
    code, sep, comment = line.partition("  #")
    try:
        node = ast.parse(code.strip()).body
    except SyntaxError:
        return None
    if not (sep and comment.strip() and len(node) == 1):
        return None
    node = node[0]
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        target, ann = node.targets[0], None
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        target = node.target
        ann = node.annotation.value if isinstance(node.annotation, ast.Constant) else ast.unparse(node.annotation)
    else:
        return None
    try:
        value = ast.literal_eval(node.value)
    except ValueError:
        return None
    return target.id, ann, value, comment.strip()


def _parameter_lines(nb):
    cells = [c for c in nb["cells"]
             if c["cell_type"] == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"expected exactly one code cell tagged 'parameters', found {len(cells)}")
    out = []
    for i, line in enumerate(_source(cells[0]).splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parsed = _parse_line(line)
        if parsed is None:
            raise ValueError(f"parameters line {i} {line!r}: expected `name: type = <literal>  # meaning (legal "
                             "values)` (the `: type` may be left out)")
        out.append(parsed)
    return cells[0], out


def parameters_cell(nb) -> tuple[dict, dict]:
    """(cell, {name: (value, comment)}) of the code cell tagged `parameters`.

    Each line must be `name: type = <python literal>  # comment` or `name = <python literal>  # comment` (blank
    lines and whole-line comments allowed); anything else raises ValueError naming the line.
    """
    cell, lines = _parameter_lines(nb)
    return cell, {name: (value, comment) for name, _, value, comment in lines}


def parameter_types(nb) -> dict:
    """{name: type annotation string} of the parameters cell ('int', 'list[str]', 'Optional[float]', ...); a
    parameter without an annotation gets the type of its default (None when the default is None)."""
    _, lines = _parameter_lines(nb)
    return {name: ann if ann is not None else _type_of(value) for name, ann, value, _ in lines}


def _type_of(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        kinds = {type(v).__name__ for v in value}
        return f"list[{kinds.pop()}]" if len(kinds) == 1 else "list"
    return type(value).__name__


_SCALARS = {"int": int, "float": (int, float), "str": str, "bool": bool}


def _conforms(value, ann: str | None) -> bool:
    """Does `value` have the declared type? ann: int, float, str, bool, list, list[T], Optional[T], None (any)."""
    if ann is None:
        return True
    m = re.fullmatch(r"Optional\[(.+)\]", ann)
    if m:
        return value is None or _conforms(value, m.group(1))
    m = re.fullmatch(r"list(?:\[(.+)\])?", ann)
    if m:
        return isinstance(value, list) and all(_conforms(v, m.group(1)) for v in value)
    if ann not in _SCALARS:
        raise ValueError(f"parameter type {ann!r} is not supported; allowed: int, float, str, bool, list[T], "
                         "Optional[T]")
    if isinstance(value, bool) and ann != "bool":  # True is an int to Python, not to a reader
        return False
    return isinstance(value, _SCALARS[ann])


def _coerce(value, ann: str | None):
    """A string given for a non-string parameter is read as YAML (papermill's `-p divergences '[js]'`); a scalar
    given for a list parameter becomes a one-element list (`-p divergences js`); an int for a float is a float."""
    import yaml

    core = re.fullmatch(r"Optional\[(.+)\]", ann or "")
    core = core.group(1) if core else ann
    if isinstance(value, str) and core not in ("str", None):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"cannot read {value!r} as YAML: {e}") from None
    if core and core.startswith("list") and value is not None and not isinstance(value, list):
        value = [value]
    if core == "float":
        value = _as_float(value)
    if core == "list[float]" and isinstance(value, list):
        value = [_as_float(v) for v in value]
    return value


def _as_float(v):
    """1 → 1.0 and '1e-3' → 0.001 (YAML 1.1 reads an exponent without a dot as a string); anything else as is."""
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _injected_names(namespace: dict) -> list[str]:
    """Names assigned by papermill's injected-parameters cell (the last input starting '# Parameters'), if any."""
    for src in reversed(list(namespace.get("In") or [])):
        if isinstance(src, str) and src.lstrip().startswith("# Parameters"):
            try:
                tree = ast.parse(src)
            except SyntaxError:
                return []
            return [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)]
    return []


def parameters(namespace: dict, name: str) -> dict:
    """Check and parse the parameters of notebooks/<name>.ipynb as they stand in `namespace` (the notebook's
    `globals()`); returns {parameter: value} in the order of the parameters cell and writes parsed values back.

    - a name injected by papermill that the parameters cell does not declare (a misspelling) is an error that
      names it, the closest declared names and all the allowed ones;
    - a string given for a list, number or bool parameter is read as YAML (`-p divergences '[js]'`), and a single
      value for a list parameter becomes a one-element list (`-p divergences js`);
    - a value of the wrong type is an error naming the parameter, the value and the declared type.
    Call it first, before anything is computed or written.
    """
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    if not path.exists():
        raise ValueError(f"parameters: no notebook {name!r}; allowed: {[p.stem for p in list_notebooks()]}")
    import nbformat

    nb = nbformat.read(path, as_version=4)
    types = parameter_types(nb)
    unknown = [n for n in _injected_names(namespace) if n not in types]
    if unknown:
        hints = "; ".join(f"{n!r}: did you mean {difflib.get_close_matches(n, types, 2, 0.6)}?" for n in unknown)
        raise ValueError(f"{name}: unknown parameter(s) {unknown} ({hints}); allowed: {sorted(types)}")
    out, bad = {}, []
    for n, ann in types.items():
        if n not in namespace:
            raise ValueError(f"{name}: parameter {n!r} is not defined: run the parameters cell first")
        try:
            v = _coerce(namespace[n], ann)
        except ValueError as e:
            bad.append(f"{n}={namespace[n]!r}: {e}")
            continue
        if not _conforms(v, ann):
            bad.append(f"{n}={namespace[n]!r} is not {ann}")
            continue
        out[n] = namespace[n] = v
    if bad:
        raise ValueError(f"{name}: bad parameter value(s): " + "; ".join(bad))
    from fdpg_core.kit.results import NO_TRAIN_ENV

    if out.get("rerun") and os.environ.get(NO_TRAIN_ENV, "") not in ("", "0"):
        raise ValueError(f"{name}: rerun=True retrains every run, but {NO_TRAIN_ENV} is set (a rendering never "
                         "trains); allowed: rerun=False")
    return out


def preset_path(name: str, preset: str) -> Path:
    """notebooks/params/<name>.<preset>.yaml: the parameters of notebook `name` at `preset` (it may not exist)."""
    return NOTEBOOK_DIR / "params" / f"{name}.{preset}.yaml"


def preset_file(name: str, preset: str) -> dict:
    """The keys of notebooks/params/<name>.<preset>.yaml ({} for 'smoke': the notebook's own defaults); ValueError
    naming the presets that exist when there is no such file."""
    import yaml

    if preset == "smoke":
        return {}
    path = preset_path(name, preset)
    if not path.exists():
        found = sorted(p.name.split(".")[-2] for p in path.parent.glob(f"{name}.*.yaml"))
        raise ValueError(f"{name}: no preset file {path.name}; allowed presets: {['smoke'] + found}")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def preset_values(name: str, preset: str, overrides: dict | None = None) -> dict:
    """The parameters notebooks/<name>.ipynb runs with at `preset`: its defaults for 'smoke', else the defaults
    updated with notebooks/params/<name>.<preset>.yaml, then with `overrides`; checked by `parameters` (an unknown
    name or a bad value is an error naming the preset)."""
    import nbformat

    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    values = {k: v for k, (v, _) in parameters_cell(nb)[1].items()}
    given = {**preset_file(name, preset), "preset": preset, **(overrides or {})}
    namespace = {**values, **given, "In": ["# Parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in given.items())]}
    try:
        return parameters(namespace, name)
    except ValueError as e:
        raise ValueError(f"preset {preset!r} of {name}: {e}") from None


def preset_fingerprint(name: str, preset: str) -> tuple[str, str]:
    """(experiment, fingerprint) of the runs notebooks/<name>.ipynb makes at `preset`, read from its own source:
    its `EXPERIMENT = "..."` line and its `results.fingerprint(P, sweep=[...], added={...})` call (literal
    arguments)."""
    import nbformat

    from fdpg_core.kit import results

    code = [_source(c) for c in nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)["cells"]
            if c["cell_type"] == "code"]
    experiments = [m.group(1) for src in code for m in re.finditer(r'^EXPERIMENT = "(\w+)"', src, re.M)]
    calls = [n for src in code for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call)
             and ast.unparse(n.func) == "results.fingerprint"]
    if len(experiments) != 1 or len(calls) != 1:
        raise ValueError(f"{name}: expected one EXPERIMENT = \"...\" line and one results.fingerprint(...) call, "
                         f"found {len(experiments)} and {len(calls)}")
    sweep = ast.literal_eval(next((k.value for k in calls[0].keywords if k.arg == "sweep"), ast.List([])))
    added = ast.literal_eval(next((k.value for k in calls[0].keywords if k.arg == "added"), ast.Dict([], [])))
    return experiments[0], results.fingerprint(preset_values(name, preset), sweep=sweep, added=added)


def clear_outputs(nb, *, keep_checked: bool = True):
    """A copy of `nb` with every output and execution count cleared, except the outputs of cells whose
    source contains `# NBVAL_CHECK_OUTPUT` (when keep_checked; their execution_count is set to 1, which nbval
    needs to compare them); papermill metadata, and a rendering's note cell and metadata, dropped."""
    nb = copy.deepcopy(nb)
    nb["cells"] = [c for c in nb["cells"] if c.get("id") != NOTE_ID]
    nb["metadata"].pop(RENDER_KEY, None)
    for c in nb["cells"]:
        c.get("metadata", {}).pop("papermill", None)
        c.get("metadata", {}).pop("execution", None)
        if c["cell_type"] != "code":
            continue
        if not (keep_checked and CHECK_MARK in _source(c)):
            c["outputs"] = []
        # nbval skips comparing a cell whose execution_count is None ("unrun reference cell"): a kept
        # reference output needs one; a fixed 1 keeps diffs quiet
        c["execution_count"] = 1 if c["outputs"] else None
        for o in c["outputs"]:
            if "execution_count" in o:  # execute_result outputs carry one
                o["execution_count"] = None
    nb["metadata"].pop("papermill", None)
    return nb


def copy_checked_outputs(nb, executed):
    """`clear_outputs(nb)` with the marked cells' outputs taken from `executed` (matched by cell id)."""
    out = clear_outputs(nb, keep_checked=False)
    ran = {c.get("id"): c for c in executed["cells"]}
    for c in out["cells"]:
        if c["cell_type"] == "code" and CHECK_MARK in _source(c):
            if c.get("id") not in ran:
                raise ValueError(f"copy_checked_outputs: cell {c.get('id')!r} is missing from the executed notebook")
            c["outputs"] = copy.deepcopy(ran[c["id"]]["outputs"])
    return clear_outputs(out)  # normalise: execution counts, papermill metadata


# ------------------------------------------------------------------------------------------------- rendering


def _render_inputs(name: str):
    """(preset file, every file of the preset's out_dir) that a rendering of notebooks/<name>.ipynb reads."""
    preset = preset_path(name, RENDER_PRESET)
    out_dir = REPO_ROOT / str(preset_file(name, RENDER_PRESET)["out_dir"])
    files = sorted(p for p in out_dir.rglob("*") if p.is_file() and not p.name.endswith(".tmp")) \
        if out_dir.is_dir() else []
    return preset, files


def render_hash(nb, name: str) -> str:
    """sha256 of the notebook's cells (type and source, the rendering's note left out), its cpu preset file and
    every file (path and bytes) in that preset's out_dir: what a rendering shows is a function of these."""
    h = hashlib.sha256()
    cells = [[c["cell_type"], _source(c)] for c in nb["cells"] if c.get("id") != NOTE_ID]
    h.update(json.dumps(cells, ensure_ascii=False).encode())
    preset, files = _render_inputs(name)
    h.update(preset.read_bytes())
    for f in files:
        h.update(f.relative_to(REPO_ROOT).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _note(name: str):
    import nbformat

    text = (f"*Outputs rendered from the committed results of the `{RENDER_PRESET}` preset "
            f"(`notebooks/params/{name}.{RENDER_PRESET}.yaml`, runs and evaluation records in its `out_dir`): nothing "
            "was trained to make them. `make render` renders them again; `python scripts/run_notebooks.py --preset "
            f"{RENDER_PRESET} --only {name[:2]}` reruns the notebook at that preset, reusing the saved runs. The "
            "parameters cell shows the notebook's own (smoke) defaults.*")
    return nbformat.v4.new_markdown_cell(text, id=NOTE_ID)


def rendered(nb, executed, name: str, replace: dict | None = None):
    """The committable rendering of notebook `nb` from `executed` (its papermill run at the cpu preset): papermill's
    injected-parameters cell removed (the parameters cell keeps the smoke defaults), each cell's source and metadata
    as in `nb`, execution counts renumbered 1, 2, ... over the code cells, text outputs with each `replace` key
    (e.g. a temp dir, the repo root) replaced by its value, the notebook's metadata as in `nb` plus
    metadata.fdpg_render, and the note cell after the title."""
    nb = clear_outputs(nb, keep_checked=False)
    nb["cells"] = [c for c in nb["cells"] if c.get("id") != NOTE_ID]
    ran = {c.get("id"): c for c in executed["cells"]
           if "injected-parameters" not in c.get("metadata", {}).get("tags", [])}
    count = 0
    for c in nb["cells"]:
        if c["cell_type"] != "code":
            continue
        if c.get("id") not in ran:
            raise ValueError(f"rendered: cell {c.get('id')!r} of {name} is missing from the executed notebook")
        outputs = copy.deepcopy(ran[c["id"]].get("outputs", []))
        count += 1
        c["execution_count"] = count
        for o in outputs:
            if "execution_count" in o:
                o["execution_count"] = count
            o.get("metadata", {}).pop("papermill", None)
            for key in ("text", "traceback"):
                if key in o:
                    o[key] = _replaced(o[key], replace or {})
            for mime, v in o.get("data", {}).items():
                if mime.startswith("text/"):
                    o["data"][mime] = _replaced(v, replace or {})
        c["outputs"] = outputs
    nb["cells"].insert(1, _note(name))
    nb["metadata"][RENDER_KEY] = {"preset": RENDER_PRESET, "hash": render_hash(nb, name)}
    return nb


def _replaced(text, replace: dict):
    if isinstance(text, list):
        return [_replaced(t, replace) for t in text]
    for old, new in sorted(replace.items(), key=lambda kv: -len(kv[0])):  # longest first
        text = text.replace(old, new)
    return text


_VOLATILE_NB = ("papermill",)
_VOLATILE_CELL = ("papermill", "execution")


def render_problems(nb, name: str) -> list[str]:
    """Why notebook `nb` (notebooks/<name>.ipynb as committed) is not a current rendering of its cpu preset: no
    rendering, a stored hash that no longer matches the cells, preset file and results, an error output, volatile
    metadata, the injected-parameters cell or the note missing. [] when it is current."""
    info = nb["metadata"].get(RENDER_KEY)
    if not isinstance(info, dict) or "hash" not in info:
        return ["no rendered outputs (metadata.fdpg_render is missing)"]
    out = []
    if info["hash"] != render_hash(nb, name):
        out.append("the rendering is stale: its cells, its cpu preset file or the files in its out_dir changed since")
    if not nb["cells"] or len(nb["cells"]) < 2 or nb["cells"][1].get("id") != NOTE_ID:
        out.append(f"the note cell ({NOTE_ID!r}) is not the second cell")
    out += [f"volatile notebook metadata {k!r}" for k in _VOLATILE_NB if k in nb["metadata"]]
    for c in nb["cells"]:
        cid = c.get("id")
        if "injected-parameters" in c.get("metadata", {}).get("tags", []):
            out.append(f"papermill's injected-parameters cell {cid!r} is still there")
        out += [f"volatile metadata {k!r} in cell {cid!r}" for k in _VOLATILE_CELL if k in c.get("metadata", {})]
        if c["cell_type"] == "code":
            if any(o.get("output_type") == "error" for o in c.get("outputs", [])):
                out.append(f"cell {cid!r} has an error output")
            if c.get("outputs") and c.get("execution_count") is None:
                out.append(f"cell {cid!r} has outputs but no execution count")
    return out
