"""The report as a tree of plain blocks, so the HTML and the Markdown come from one source.

Every text in a block is plain, untrusted text: the renderers escape it. No block carries
markup of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Cell:
    text: str
    bold: bool = False  # the best value in its column, a significant paired difference
    detail: str = ""  # secondary text after the main one (an interval); never bold
    tone: str = ""  # '' | 'good' | 'bad' | 'muted': a colour hint for HTML only
    title: str = ""  # a tooltip (HTML only)


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    numeric_from: int = 1  # columns from this index on are right-aligned


@dataclass
class Paragraph:
    text: str
    note: bool = False  # a side note (smaller, muted)


@dataclass
class BulletList:
    items: list[str]


@dataclass
class Figure:
    png: bytes
    filename: str  # written beside report.md
    alt: str
    caption: str = ""


@dataclass
class Preformatted:
    text: str


@dataclass
class Details:
    """Collapsed in HTML; in Markdown a labelled subsection."""

    summary: str
    blocks: list = field(default_factory=list)


@dataclass
class Samples:
    """Continuations of one prompt side by side."""

    prompt: str
    reference: str
    continuations: list[tuple[str, str]]  # (objective, generation)
    index: int | None = None


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list = field(default_factory=list)
    level: int = 2


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section] = field(default_factory=list)

    def figures(self) -> list[Figure]:
        found: list[Figure] = []

        def walk(blocks):
            for b in blocks:
                if isinstance(b, Figure):
                    found.append(b)
                elif isinstance(b, Details | Section):
                    walk(b.blocks)

        walk(self.sections)
        return found
