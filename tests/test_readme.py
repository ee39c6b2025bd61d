"""Every link in README.md, docs/*.md and CONTRIBUTING.md leads somewhere: in-page anchors
name a heading (by GitHub's rules for heading anchors), relative links name a file of the
repository (and, with an anchor, a heading of that file). Links in code blocks and code spans
are not links."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: The documents a reader follows links between: the front door, docs/ and the contributor's.
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "CONTRIBUTING.md"]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:name|id)=\"([^\"]+)\"", re.I)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)")
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+\"[^\"]*\")?\s*\)"
)
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            continue
        if opened:
            fence = opened.group(1)
            continue
        lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text as rendered (no code ticks, emphasis or link
    syntax), lower-cased, punctuation other than - and _ dropped, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown file has: its headings' (repeats get -1, -2...) and HTML ones."""
    found: set[str] = set()
    seen: Counter[str] = Counter()
    for _, line in prose_lines(text):
        found.update(_HTML_ANCHOR.findall(line))
        heading = _HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            found.add(base if not seen[base] else f"{base}-{seen[base]}")
            seen[base] += 1
    return found


def links(text: str) -> list[tuple[int, str]]:
    """(line number, destination) of every inline and reference-definition link."""
    found: list[tuple[int, str]] = []
    for number, line in prose_lines(text):
        line = _CODE_SPAN.sub("", line)
        for match in (*_INLINE_LINK.finditer(line), *_REFERENCE.finditer(line)):
            found.append((number, match.group(1).strip("<>")))
    return found


def broken_links(path: Path) -> list[str]:
    """One line per link of ``path`` that leads nowhere."""
    text = path.read_text(encoding="utf-8")
    problems: list[str] = []
    for number, destination in links(text):
        where = f"{path.name}:{number}: {destination}"
        if re.match(r"[a-z][a-z0-9+.-]*:", destination, re.I):
            continue  # https:, mailto: ...: not the repository's
        target, _, fragment = destination.partition("#")
        file = (path.parent / unquote(target)).resolve() if target else path
        if not file.is_relative_to(ROOT):
            problems.append(f"{where}: outside the repository")
        elif not file.exists():
            problems.append(f"{where}: no such file")
        elif (
            fragment
            and file.suffix == ".md"
            and unquote(fragment) not in anchors(file.read_text(encoding="utf-8"))
        ):
            problems.append(f"{where}: no heading with that anchor in {file.name}")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_link_leads_somewhere(document: Path) -> None:
    assert links(document.read_text(encoding="utf-8")), f"{document.name} has no links to check?"
    assert broken_links(document) == []


def test_the_readme_links_every_document() -> None:
    """docs/ and CONTRIBUTING.md are reached from the front door."""
    text = README.read_text(encoding="utf-8")
    linked = {destination.partition("#")[0] for _, destination in links(text)}
    wanted = {str(path.relative_to(ROOT)) for path in DOCUMENTS[1:]}
    assert wanted - linked == set()


def test_the_two_commands_come_first() -> None:
    text = README.read_text(encoding="utf-8")
    sections = [line for _, line in prose_lines(text) if line.startswith("## ")]
    assert sections[0] == "## Two commands"
    first = text[text.index("## Two commands") :]
    block = first[first.index("```sh") : first.index("```", first.index("```sh") + 5)]
    assert [line.split()[:2] for line in block.splitlines()[1:]] == [
        ["./dev", "demo"],
        ["./dev", "test"],
    ]


def test_contributing_opens_on_the_module_map() -> None:
    """A newcomer finds which module owns what, and its tests, in the first screen."""
    lines = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8").splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| module |"))
    assert header < 25
    assert lines[header].rstrip(" |").endswith("| tests")


def deployment_section(text: str) -> str:
    start = text.index("\n## Deployment\n")
    return text[start : text.index("\n## ", start + 1)]


def test_readme_has_a_deployment_section_for_each_way_to_run_it() -> None:
    text = README.read_text(encoding="utf-8")
    assert "deployment" in anchors(text)
    sections = [line for _, line in prose_lines(text) if line.startswith("## ")]
    assert sections.index("## Deployment") == sections.index("## Install") + 1
    ways = re.split(r"^### ", deployment_section(text), flags=re.M)[1:]
    titles = [way.splitlines()[0] for way in ways]
    for wanted in ("Binary", "systemd", "textfile", "Docker Compose", "Kubernetes"):
        assert any(wanted in title for title in titles), f"no section for {wanted}: {titles}"
    for title, way in zip(titles, ways, strict=True):
        first = next(line for line in way.splitlines()[1:] if line.strip())
        assert first == "```sh", f"### {title} must start with a command to copy, not {first!r}"


def test_deployment_names_files_that_exist() -> None:
    """Paths of the repository in the commands (not links, so not checked above)."""
    section = deployment_section(README.read_text(encoding="utf-8"))
    named = set(re.findall(r"(?<![\w/.-])((?:deploy|helm|monitoring)/[\w./-]*\w)", section))
    assert "deploy/compose/compose.yaml" in named
    assert [path for path in sorted(named) if not (ROOT / path).exists()] == []


# ------------------------------------------------------------------ the checker itself

SAMPLE = """\
# Title

## Install & run: `--once` — quickly
## Install & run: `--once` — quickly
### Über [links](https://example.invalid)
<a id="custom"></a>

```sh
# not a heading
[not a link](#nowhere)
```

See [this](#install--run---once--quickly), [the repeat](#install--run---once--quickly-1),
[über](#über-links), [custom](#custom), ![img](sample.md), `[code](#nowhere)`,
[web](https://example.invalid/x#y) and [ref].

[ref]: sample.md#title
"""


def test_slugs_follow_github(tmp_path: Path) -> None:
    assert slug("Alerts, dashboard and runbook") == "alerts-dashboard-and-runbook"
    assert slug("`--once` and the textfile collector") == "--once-and-the-textfile-collector"
    assert slug("Docker Compose (no Kubernetes)") == "docker-compose-no-kubernetes"
    assert slug("SimplivityExporterDown") == "simplivityexporterdown"


def test_the_checker_accepts_good_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    sample = tmp_path / "sample.md"
    sample.write_text(SAMPLE, encoding="utf-8")
    assert len(links(SAMPLE)) == 8  # the heading's link too
    assert broken_links(sample) == []


@pytest.mark.parametrize(
    ("link", "problem"),
    [
        ("[x](#missing)", "no heading with that anchor"),
        ("[x](#install--run---once--quickly-2)", "no heading with that anchor"),
        ("[x](missing.md)", "no such file"),
        ("[x](sample.md#missing)", "no heading with that anchor"),
        ("[x](../outside.md)", "outside the repository"),
    ],
)
def test_the_checker_reports_broken_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, link: str, problem: str
) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (tmp_path / "outside.md").write_text("# Out\n", encoding="utf-8")
    monkeypatch.setattr(f"{__name__}.ROOT", root)
    sample = root / "sample.md"
    sample.write_text(SAMPLE + f"\n{link}\n", encoding="utf-8")
    (found,) = broken_links(sample)
    assert problem in found
    assert link.split("(")[1].rstrip(")") in found


def exported_families() -> set[str]:
    """Every family the exporter writes: the golden file's."""
    golden = (ROOT / "tests" / "golden" / "metrics.txt").read_text(encoding="utf-8")
    return set(re.findall(r"^# TYPE (\S+) ", golden, flags=re.M))


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_family_a_document_names_is_exported(document: Path) -> None:
    """A family renamed or removed leaves no document naming the old one (names that end in
    ``_``, such as ``simplivity_exporter_*``, are prefixes)."""
    named = set(re.findall(r"\bsimplivity_\w*[a-z0-9]\b", document.read_text(encoding="utf-8")))
    assert named - exported_families() == set()


def test_every_exported_family_is_in_the_metrics_table_the_changelog_promises() -> None:
    """CHANGELOG.md promises the names of docs/metrics.md's Metrics table: every family the
    exporter writes (the golden file's) must be there, so that none escapes the promise."""
    exported = exported_families()
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    table = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    documented = {
        name
        for row in table.splitlines()
        if row.startswith("| `")
        for name in re.findall(r"`(simplivity_\w+)`", row.split(" | ")[0])
    }
    assert exported - documented == set()
    assert "(../CHANGELOG.md#what-stays-stable)" in table
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## What stays stable" in changelog
    assert "(docs/metrics.md#metrics)" in changelog.split("\n## ", 2)[1]
