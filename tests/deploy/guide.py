"""Reading deploy/README.md: its headings (as GitHub anchors), its links and its shell commands."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from .helpers import GUIDE


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path = GUIDE) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        match = re.match(r"#{1,6} (.+)", line)
        if match and not in_code:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path = GUIDE) -> list[str]:
    """Every Markdown link target of the file (inline links, possibly split over two lines)."""
    text = path.read_text()
    return [m.group(1) for m in re.finditer(r"\]\(\s*([^)\s]+)\s*\)", text)]


@dataclass(frozen=True)
class Command:
    section: str
    """The ### heading it is under."""
    text: str
    step: str | None
    """The **N.** step of the section it belongs to, if any."""

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)


def commands(path: Path = GUIDE, chapter: str = "Operations") -> list[Command]:
    """The commands of the ```sh blocks in a ## chapter, one per line (comments dropped)."""
    out: list[Command] = []
    section, step, inside, block = "", None, False, False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            inside = line[3:].strip() == chapter
            continue
        if not inside:
            continue
        if line.startswith("```"):
            block = line.strip() == "```sh" if not block else False
            continue
        if block:
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                out.append(Command(section, stripped, step))
            continue
        if line.startswith("### "):
            section, step = line[4:].strip(), None
        elif match := re.match(r"\*\*(\d+)\.", line):
            step = match.group(1)
    return out
