"""Write the configuration reference, docs/configuration.md, from the Settings class.

`python -m scripts.config_docs` prints it, `--write` writes it, `--check` exits 1 when the file is stale.
The descriptions live on the fields of app/settings.py (one place); edit them there, never the output.
"""

from __future__ import annotations

import argparse
import re
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import annotated_types
from pydantic.fields import FieldInfo

from app.settings import EXTRA_VARIABLES, SECTIONS, Settings

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "configuration.md"
COMMAND = ".venv/bin/python -m scripts.config_docs --write"
_REPO_PATH = re.compile(r"(?<![\w/`])((?:docs|bench|app)/[\w./-]*[\w/])")


def sections() -> Iterator[tuple[str, list[str]]]:
    """Yield each section's title and its field names, in the class's order."""
    starts = {first: title for title, first in SECTIONS}
    names = list(Settings.model_fields)
    unknown = set(starts) - set(names)
    if unknown or names[0] not in starts:
        raise ValueError(f"SECTIONS must name fields of Settings and start at {names[0]!r}; check {sorted(unknown)}")
    current: tuple[str, list[str]] | None = None
    for name in names:
        if name in starts:
            if current is not None:
                yield current
            current = (starts[name], [])
        assert current is not None
        current[1].append(name)
    if current is not None:
        yield current


def undocumented() -> list[str]:
    """Return the environment names of the fields that have no description."""
    return [name.upper() for name, field in Settings.model_fields.items() if not (field.description or "").strip()]


def render_default(value: object) -> str:
    """Show a default as it would be written in the environment."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{int(value)}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, (frozenset, set, tuple, list)):
        return f"`{','.join(str(v) for v in sorted(value))}`" if value else "empty"
    return f"`{value}`"


def render_values(field: FieldInfo) -> str:
    """Say which values the field accepts, from its type and its bounds."""
    annotation = field.annotation
    if annotation is bool:
        return "`0` or `1`"
    if typing.get_origin(annotation) is typing.Literal:
        return ", ".join(f"`{choice}`" for choice in typing.get_args(annotation))
    bounds = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            bounds.append(f"≥ {item.ge:,}")
        elif isinstance(item, annotated_types.Gt):
            bounds.append(f"> {item.gt:,}")
        elif isinstance(item, annotated_types.Le):
            bounds.append(f"≤ {item.le:,}")
    return ", ".join(bounds)


def _linked(text: str) -> str:
    """Make repository paths in a description links, relative to docs/."""
    return _REPO_PATH.sub(lambda m: f"[{m.group(1)}]({_relative(m.group(1))})", text).replace("|", "\\|")


def _relative(path: str) -> str:
    return path.removeprefix("docs/") if path.startswith("docs/") else f"../{path}"


def render() -> str:
    """Return docs/configuration.md as it should be."""
    missing = undocumented()
    if missing:
        raise ValueError(f"these settings have no description in app/settings.py: {', '.join(missing)}")
    titles = [title for title, _ in SECTIONS]
    extras = {title: [v for v in EXTRA_VARIABLES if v.section == title] for title in titles}
    lines = [
        "# Configuration",
        "",
        f"<!-- Generated from app/settings.py by `{COMMAND}`; edit the descriptions there, not here. -->",
        "",
        "Every setting is an environment variable (names are case-insensitive), read once at start-up by",
        "`Settings` in [app/settings.py](../app/settings.py). A bad value stops start-up (exit 2) with a",
        "message saying what to set. Booleans take `1`/`0` (or `true`/`false`); lists are comma-separated.",
        "",
        " · ".join(f"[{title}](#{_anchor(title)})" for title in titles),
    ]
    for title, names in sections():
        lines += ["", f"## {title}", "", "| variable | default | values | description |", "|---|---|---|---|"]
        for name in names:
            field = Settings.model_fields[name]
            lines.append(
                f"| `{name.upper()}` | {render_default(field.default)} | {render_values(field)} "
                f"| {_linked(field.description or '')} |"
            )
        for extra in extras[title]:
            lines.append(f"| `{extra.name}` | `{extra.default}` |  | {_linked(extra.description)} |")
    return "\n".join(lines) + "\n"


def _anchor(title: str) -> str:
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.config_docs", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {OUTPUT.relative_to(ROOT)}")
    mode.add_argument("--check", action="store_true", help="exit 1 when the file differs from the settings")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        OUTPUT.parent.mkdir(exist_ok=True)
        OUTPUT.write_text(text, encoding="utf-8")
    elif args.check:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
