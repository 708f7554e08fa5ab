"""The documentation: the generated configuration reference is current, and every link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.settings import EXTRA_VARIABLES, SECTIONS, Settings
from scripts import config_docs

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted(
    p.relative_to(ROOT).as_posix()
    for p in [ROOT / "README.md", ROOT / "README.pod.md", ROOT / "DEPLOYMENT_CHECKLIST.md", ROOT / "bench/README.md"]
    + [ROOT / "MIGRATION_SUMMARY.md", ROOT / "deploy/README.md", ROOT / "examples/visual_search/README.md"]
    + list((ROOT / "docs").glob("*.md"))
    if p.exists()
)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # links and images
_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def test_configuration_reference_is_current():
    expected = config_docs.render()
    actual = config_docs.OUTPUT.read_text(encoding="utf-8") if config_docs.OUTPUT.exists() else ""
    assert actual == expected, f"docs/configuration.md is stale: run `{config_docs.COMMAND}`"


def test_settings_every_field_has_a_description():
    assert config_docs.undocumented() == []


def test_config_docs_sections_hold_every_field_once_in_class_order():
    listed = [name for _, names in config_docs.sections() for name in names]
    assert listed == list(Settings.model_fields)
    assert [title for title, _ in config_docs.sections()] == [title for title, _ in SECTIONS]


def test_config_docs_extra_variables_belong_to_a_section():
    titles = {title for title, _ in SECTIONS}
    assert all(v.section in titles and v.description.strip() for v in EXTRA_VARIABLES)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "unset"),
        (True, "`1`"),
        (False, "`0`"),
        (2.0, "`2`"),
        (0.25, "`0.25`"),
        (1024, "`1024`"),
        (frozenset({443, 80}), "`80,443`"),
        ((), "empty"),
        ("ViT-B-32", "`ViT-B-32`"),
    ],
)
def test_config_docs_render_default(value, expected):
    assert config_docs.render_default(value) == expected


def test_config_docs_cli_check_fails_on_stale_file(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "configuration.md"
    stale.write_text("# Configuration\n", encoding="utf-8")
    monkeypatch.setattr(config_docs, "OUTPUT", stale)
    monkeypatch.setattr(config_docs, "ROOT", tmp_path)
    assert config_docs.main(["--check"]) == 1
    assert config_docs.COMMAND in capsys.readouterr().err
    assert config_docs.main(["--write"]) == 0
    assert config_docs.main(["--check"]) == 0


def _anchors(path: Path) -> set[str]:
    """Return the heading anchors GitHub gives a Markdown file."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, re.MULTILINE):
        plain = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
        anchors.add(re.sub(r"[^\w\- ]", "", plain).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("doc", DOCS)
def test_docs_links_resolve(doc):
    source = ROOT / doc
    broken = []
    for target in _LINK.findall(_FENCE.sub("", source.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # http(s) and mailto links are not checked offline
        file_part, _, anchor = target.partition("#")
        path = (source.parent / file_part).resolve() if file_part else source
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target} (no such heading)")
    assert broken == [], f"{doc} links to what does not exist: {broken}"


def test_readme_fits_a_newcomers_reading():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


_SHELL_BLOCK = re.compile(r"^```(?:bash|sh)\n(.*?)^```", re.DOTALL | re.MULTILINE)
# Where a command writes: a redirection (not `2>&1`), or an output folder option.
_WRITES = re.compile(r"(?<![\d>&])>>?\s*([^\s&|;)]+)|--out\s+(\S+)")


def _written_paths(markdown: str) -> list[str]:
    """Return the repository-relative paths the shell blocks of a Markdown text write to."""
    paths = []
    for block in _SHELL_BLOCK.findall(markdown):
        for line in block.splitlines():
            command = "" if line.lstrip().startswith("#") else line.split(" #", 1)[0]
            paths += [a or b for a, b in _WRITES.findall(command)]
    return [p for p in paths if not p.startswith(("/", "$", "~"))]


def _ignored_folders() -> set[str]:
    lines = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    return {line.strip("/") for line in lines if line.endswith("/") and not line.startswith("#")}


def test_written_paths_finds_redirections_and_out_folders():
    text = "```bash\nx > a.txt 2>&1; y >> b/c.log\nz --out d # > e\n# -> f\nw > /dev/null\n```\n"
    assert _written_paths(text) == ["a.txt", "b/c.log", "d"]


@pytest.mark.parametrize("doc", ["README.md", "README.pod.md"])
def test_readme_commands_write_only_into_ignored_folders(doc):
    # A newcomer's clone must stay clean: `git status` after the quick start shows nothing new.
    written = _written_paths((ROOT / doc).read_text(encoding="utf-8"))
    assert [p for p in written if p.split("/", 1)[0] not in _ignored_folders()] == []
