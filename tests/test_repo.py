"""The repository's own contracts: one source of truth for dependencies, pinned versions, CI entry point."""
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _requirements(name):
    lines = (ROOT / name).read_text().splitlines()
    return [l.split("#")[0].strip() for l in lines if l.split("#")[0].strip()]


def test_requirements_are_exact_pins():
    reqs = _requirements("requirements.txt") + _requirements("requirements-nodeps.txt")
    assert reqs, "requirements.txt is empty"
    for r in reqs:
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9_.+\-]+", r), f"not an exact pin: {r!r}"
    assert "torch==2.13.0" in reqs, "torch must be pinned to 2.13.0 (a bare torch pulls a multi-GB CUDA build)"


def test_environment_yml_points_at_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    pythons = [d for d in deps if isinstance(d, str) and d.startswith("python")]
    assert pythons == [f"python={sys.version_info.major}.{sys.version_info.minor}"], pythons
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    # one source of truth: the pip section only includes requirements.txt, it lists no package itself
    assert pip_sections == [["-r requirements.txt"]], pip_sections


def test_pyproject_package_and_licence():
    import tomllib
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "fdpg_core"
    assert meta["license"]["text"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text()


def test_ci_runs_make_test_and_nothing_else():
    """CI runs what a newcomer runs, after installing chromium for the real-browser test, which it then requires."""
    lines = [l.strip() for l in (ROOT / ".ci/run").read_text().splitlines()]
    commands = [l for l in lines if l and not l.startswith("#") and not l.startswith(("set ", "cd "))]
    assert commands == ["bash scripts/install_chromium.sh", "FDPG_REQUIRE_BROWSER=1 make test"], commands


def test_readme_opens_with_the_two_commands():
    head = (ROOT / "README.md").read_text()[:3000]
    assert "make demo" in head and "make test" in head


def test_top_level_layout():
    for d in ["notebooks", "fdpg_core", "figures", "data", "tests"]:
        assert (ROOT / d).is_dir(), d
    assert (ROOT / "environment.yml").is_file()


LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def _local_links(md: Path):
    for target in LINK.findall(md.read_text()):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        yield target.split("#")[0]


def test_markdown_links_point_at_committed_files():
    """Every relative link and image in the README, notebooks/README and docs/ names a file that exists, so the
    Results section cannot cite a figure that was renamed or never rendered."""
    docs = [ROOT / "README.md", ROOT / "notebooks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = [f"{md.relative_to(ROOT)} -> {t}" for md in docs for t in _local_links(md)
               if t and not (md.parent / t).exists()]
    assert not missing, missing


def test_readme_performance_numbers_are_the_committed_benchmark():
    """The README's Performance tables are copied from committed `make bench` outputs (one per machine), row for
    row: every numeric row is a line of one of the figures/bench/<machine>.md files the section names."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Performance", 1)[1].split("\n## ", 1)[0]
    names = sorted(set(re.findall(r"figures/bench/([\w.-]+)\.md", section)))
    assert names, "the Performance section must name the figures/bench/<machine>.md it copies"
    committed = []
    for name in names:
        committed += (ROOT / "figures" / "bench" / f"{name}.md").read_text().splitlines()
        json_path = ROOT / "figures" / "bench" / f"{name}.json"
        assert json_path.is_file(), json_path
    rows = [l for l in section.splitlines() if l.startswith("| ") and not l.startswith("|---")]
    numeric = [l for l in rows if re.search(r"\d", l.split("|")[1] + l.split("|")[2])]
    assert len(numeric) >= 8, "expected the sampling, f-DPG step, efficiency and memory rows"
    assert not [l for l in numeric if l not in committed], [l for l in numeric if l not in committed]
