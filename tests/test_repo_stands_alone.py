"""The repository stands alone: its user-facing text explains the method itself (docs/METHOD.md) or cites the paper,
never points at notes kept outside the repository, and carries no tracker numbers or internal review markers.

Scanned: every text file that git lists (tracked, or new and not ignored) under README.md, docs/, notebooks/ (the
whole notebook JSON and the preset YAMLs), fdpg_core/ and scripts/.
"""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCOPE = ["README.md", "docs", "notebooks", "fdpg_core", "scripts"]

# What must not appear, and why. The patterns are written so that this file does not match them itself.
FORBIDDEN = {
    "a pointer to the method notes outside the repository (cite docs/METHOD.md or the paper instead)":
        re.compile(r"PAPER\.md", re.I),
    "a path into the folder outside the repository": re.compile(r"\.\./shared\b|\bshared\/"),
    "an internal confidence marker": re.compile(r"\[(?:unsure|lineage)\]", re.I),
    "an issue-tracker number": re.compile(r"\bissues?\s*#?\d+|(?<![\w&/#])#\d+\b", re.I),
    "a work-in-progress marker": re.compile(r"\bWIP\b"),
}


def scanned_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *SCOPE],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / f for f in sorted(set(filter(None, out.split("\0")))) if (ROOT / f).is_file()]


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file (a NUL byte, or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def violations(text: str) -> list[tuple[int, str, str]]:
    """(line number, what, the matching line) for every forbidden mention in `text`."""
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for what, pattern in FORBIDDEN.items():
            if pattern.search(line):
                found.append((lineno, what, line.strip()[:160]))
    return found


def test_the_patterns_catch_each_kind_and_spare_ordinary_text():
    paper_notes, folder = "PAPER" + ".md", "shar" + "ed"
    caught = [f"see {paper_notes} §3", f"kit notes: `{folder}/{paper_notes}`", f"(../{folder})",
              "the reward is [" + "unsure]", "setup [" + "lineage]", "targets of issue " + "7", "fixes #" + "13",
              "W" + "IP: notebooks 03-08"]
    for text in caught:
        assert violations(text), text
    spared = ["2 shared CPU cores", "docs/METHOD.md#targets", "the issue is variance", "colour #1f77b4",
              "&#8212;", "arXiv 2302.08215", "wipe", "# 1. state"]
    for text in spared:
        assert not violations(text), text


def test_user_facing_text_stands_alone():
    files = scanned_files()
    assert any(f.name == "METHOD.md" for f in files), "docs/METHOD.md is missing"
    bad = [f"{f.relative_to(ROOT)}:{n}: {what}: {line}"
           for f in files if (text := text_of(f)) is not None for n, what, line in violations(text)]
    assert not bad, "\n".join(bad)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation and symbols dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_links_into_the_method_name_its_sections():
    """Every link `METHOD.md#section` (README, docs, notebooks) names a heading that docs/METHOD.md has."""
    method = (ROOT / "docs" / "METHOD.md").read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", method, re.M)}
    assert {"targets", "the-f-dpg-gradient", "algorithm-1-step-by-step", "metrics"} <= anchors, sorted(anchors)
    links = [(f.relative_to(ROOT), a) for f in scanned_files() if (text := text_of(f)) is not None
             for a in re.findall(r"METHOD\.md#([\w-]+)", text)]
    assert links, "no link names a section of docs/METHOD.md"
    assert not [(f, a) for f, a in links if a not in anchors], [(str(f), a) for f, a in links if a not in anchors]


def test_in_page_links_name_a_heading():
    """Every `[text](#section)` link of the README and docs/*.md (their tables of contents) names one of its headings."""
    bad = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = md.read_text()
        anchors = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}
        bad += [f"{md.relative_to(ROOT)} -> #{a}" for a in re.findall(r"\]\(#([^)\s]+)\)", text) if a not in anchors]
    assert not bad, bad
