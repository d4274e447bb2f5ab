"""Rendering a `Document` as one self-contained HTML page and as Markdown.

All text is escaped here and only here: HTML gets `html.escape` on every text and attribute
(generated samples, error texts, the spec, labels), so a sample holding `<script>` stays text;
the page also carries a Content-Security-Policy that allows no script and no fetch at all, only
inline styles and `data:` images. Markdown gets the same entity escaping plus backslashes
before Markdown's own punctuation, except inside code fences (spec text, error texts), which
CommonMark shows verbatim.
"""

from __future__ import annotations

import base64
import html
import re

from beyondmle.reports.document import (
    BulletList,
    Cell,
    Details,
    Document,
    Figure,
    Paragraph,
    Preformatted,
    Samples,
    Section,
    Table,
)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
:root { color-scheme: light; --muted: #5f6b7a; --line: #d8dee4; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
  margin: 0 auto; max-width: 1320px; padding: 1.5rem 2rem 4rem; background: #fff; }
header { border-bottom: 2px solid var(--line); margin-bottom: 1rem; }
h1 { font-size: 1.7rem; margin: 0 0 .2rem; }
h2 { font-size: 1.3rem; margin: 2.2rem 0 .6rem; padding-bottom: .2rem;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 1.1rem; margin: 1.6rem 0 .5rem; }
.subtitle { color: var(--muted); margin: 0 0 .8rem; }
nav ol { columns: 3; margin: .4rem 0 1rem; padding-left: 1.4rem; }
nav a, a { color: var(--accent); text-decoration: none; }
p.note { color: var(--muted); font-size: .9rem; margin: .3rem 0; }
.scroll { overflow-x: auto; margin: .6rem 0 1rem; }
table { border-collapse: collapse; font-size: .88rem; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: .2rem 0 .4rem; }
th, td { border-bottom: 1px solid var(--line); padding: .3rem .5rem; vertical-align: top;
  text-align: left; }
th { background: #f6f8fa; font-weight: 600; white-space: nowrap; }
td.num { text-align: right; white-space: nowrap; }
tbody tr:hover { background: #fafbfc; }
td .detail { color: var(--muted); font-size: .8rem; }
.good { color: #1a7f37; } .bad { color: #cf222e; } .muted { color: var(--muted); }
figure { margin: .8rem 0 1.2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: .9rem; margin-top: .3rem; }
pre { background: #f6f8fa; border: 1px solid var(--line); padding: .6rem .8rem;
  overflow: auto; max-height: 28rem; font-size: .82rem; white-space: pre-wrap;
  word-break: break-word; }
details { margin: .5rem 0; } summary { cursor: pointer; color: var(--accent); }
.sample { border: 1px solid var(--line); border-radius: 6px; margin: .8rem 0; }
.sample .prompt { background: #f6f8fa; padding: .5rem .8rem; border-bottom: 1px solid var(--line);
  white-space: pre-wrap; word-break: break-word; }
.sample table { width: 100%; font-size: .88rem; }
.sample td { white-space: pre-wrap; word-break: break-word; }
.sample td.who { width: 14rem; font-weight: 600; white-space: normal; }
.sample tr.human td { background: #f0f7ff; }
"""


def esc(text: object) -> str:
    """HTML-escape any text, quotes included (safe in element text and attributes)."""
    return html.escape("" if text is None else str(text), quote=True)


# HTML


def to_html(doc: Document) -> str:
    toc = "".join(
        f'<li><a href="#{esc(s.anchor)}">{esc(s.title)}</a></li>'
        for s in doc.sections
        if s.level == 2
    )
    body = "\n".join(_html_section(s) for s in doc.sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(doc.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f'<header><h1>{esc(doc.title)}</h1><p class="subtitle">{esc(doc.subtitle)}</p>'
        f'<nav aria-label="Contents"><ol>{toc}</ol></nav></header>\n'
        f"<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _html_section(section: Section) -> str:
    level = min(max(section.level, 2), 4)
    inner = "\n".join(_html_block(b) for b in section.blocks)
    return (
        f'<section id="{esc(section.anchor)}">\n<h{level}>{esc(section.title)}</h{level}>\n'
        f"{inner}\n</section>"
    )


def _html_block(block) -> str:
    if isinstance(block, Section):
        return _html_section(block)
    if isinstance(block, Paragraph):
        cls = ' class="note"' if block.note else ""
        return f"<p{cls}>{esc(block.text)}</p>"
    if isinstance(block, BulletList):
        return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        caption = f"<figcaption>{esc(block.caption)}</figcaption>" if block.caption else ""
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{esc(block.alt)}">'
            f"{caption}</figure>"
        )
    if isinstance(block, Preformatted):
        return f"<pre>{esc(block.text)}</pre>"
    if isinstance(block, Details):
        inner = "\n".join(_html_block(b) for b in block.blocks)
        return f"<details><summary>{esc(block.summary)}</summary>\n{inner}\n</details>"
    if isinstance(block, Samples):
        return _html_samples(block)
    raise TypeError(f"unknown block {type(block).__name__}")


def _html_cell(cell: Cell, numeric: bool) -> str:
    classes = [c for c in ("num" if numeric else "", cell.tone) if c]
    attrs = f' class="{" ".join(classes)}"' if classes else ""
    if cell.title:
        attrs += f' title="{esc(cell.title)}"'
    text = esc(cell.text)
    if cell.bold and text:
        text = f"<strong>{text}</strong>"
    if cell.detail:
        text += f'<br><span class="detail">{esc(cell.detail)}</span>'
    return f"<td{attrs}>{text}</td>"


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in table.columns)
    rows = "\n".join(
        "<tr>"
        + "".join(_html_cell(c, i >= table.numeric_from) for i, c in enumerate(row))
        + "</tr>"
        for row in table.rows
    )
    caption = f"<caption>{esc(table.caption)}</caption>" if table.caption else ""
    return (
        f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead>'
        f"<tbody>\n{rows}\n</tbody></table></div>"
    )


def _html_samples(block: Samples) -> str:
    label = f"Prompt {block.index}" if block.index is not None else "Prompt"
    rows = [
        f'<tr class="human"><td class="who">human continuation</td>'
        f"<td>{esc(block.reference)}</td></tr>"
    ]
    rows += [
        f'<tr><td class="who">{esc(who)}</td><td>{esc(text)}</td></tr>'
        for who, text in block.continuations
    ]
    return (
        f'<div class="sample"><div class="prompt"><strong>{esc(label)}:</strong> '
        f"{esc(block.prompt)}</div><table><tbody>{''.join(rows)}</tbody></table></div>"
    )


# Markdown

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~{}!])")
_MD_LINE_START = re.compile(r"^(\s*)(?:([#>+=-])|(\d+)([.)]))")


def md_escape(text: object) -> str:
    """Inline Markdown text: HTML entities for `& < >`, a backslash before Markdown
    punctuation, no line breaks (tables and list items are one line)."""
    s = html.escape("" if text is None else str(text), quote=False)
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return " ".join(s.split())


def md_line(text: object) -> str:
    """`md_escape` for text at the start of a line, where `#`, `>`, `-`, `+`, `=` or `1.`
    would start a block: their punctuation gets a backslash too."""
    return _MD_LINE_START.sub(_escape_start, md_escape(text), count=1)


def _escape_start(m: re.Match) -> str:
    if m.group(2):
        return m.group(1) + "\\" + m.group(2)
    return m.group(1) + m.group(3) + "\\" + m.group(4)


def _md_lines(text: str) -> list[str]:
    """Escaped lines of a multi-line text, each safe at the start of a Markdown line."""
    return [md_line(line) if line.strip() else "" for line in str(text).splitlines()] or [""]


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def to_markdown(doc: Document) -> str:
    parts = [f"# {md_escape(doc.title)}", "", md_line(doc.subtitle), ""]
    for section in doc.sections:
        parts += _md_section(section)
    return "\n".join(parts).rstrip() + "\n"


def _md_section(section: Section) -> list[str]:
    out = ["#" * min(max(section.level, 2), 4) + " " + md_escape(section.title), ""]
    for block in section.blocks:
        out += _md_block(block)
    return out


def _md_block(block) -> list[str]:
    if isinstance(block, Section):
        return _md_section(block)
    if isinstance(block, Paragraph):
        text = md_escape(block.text) if block.note else md_line(block.text)
        return [f"*{text}*" if block.note and text else text, ""]
    if isinstance(block, BulletList):
        return [f"- {md_line(i)}" for i in block.items] + [""]
    if isinstance(block, Table):
        return _md_table(block)
    if isinstance(block, Figure):
        out = [f"![{md_escape(block.alt)}]({block.filename})", ""]
        if block.caption:
            out += [f"*{md_escape(block.caption)}*", ""]
        return out
    if isinstance(block, Preformatted):
        fence = _fence(block.text)
        return [fence, block.text.rstrip("\n"), fence, ""]
    if isinstance(block, Details):
        out = [f"**{md_escape(block.summary)}**", ""]
        for b in block.blocks:
            out += _md_block(b)
        return out
    if isinstance(block, Samples):
        return _md_samples(block)
    raise TypeError(f"unknown block {type(block).__name__}")


def _md_cell(cell: Cell) -> str:
    text = md_escape(cell.text)
    text = f"**{text}**" if cell.bold and text else text
    return f"{text} {md_escape(cell.detail)}" if cell.detail else text


def _md_table(table: Table) -> list[str]:
    out = []
    if table.caption:
        out += [f"**{md_escape(table.caption)}**", ""]
    out.append("| " + " | ".join(md_escape(c) for c in table.columns) + " |")
    out.append(
        "|"
        + "|".join("---:" if i >= table.numeric_from else "---" for i in range(len(table.columns)))
        + "|"
    )
    for row in table.rows:
        out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    return out + [""]


def _md_quote(who: str, text: str) -> list[str]:
    lines = _md_lines(text)
    return [f"**{md_escape(who)}:**", ""] + ["> " + line + "  " for line in lines] + [""]


def _md_samples(block: Samples) -> list[str]:
    label = f"Prompt {block.index}" if block.index is not None else "Prompt"
    out = _md_quote(label, block.prompt) + _md_quote("human continuation", block.reference)
    for who, text in block.continuations:
        out += _md_quote(who, text)
    return out + ["---", ""]
