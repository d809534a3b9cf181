"""Render a report, described once as a list of blocks, to Markdown and to self-contained HTML.

Why: ``report.md`` (for terminals, pull requests, diffs) and ``report.html`` (for people, with
charts and thumbnails) must say the same thing; describing the content once and rendering it
twice keeps them from drifting. HTML-only blocks (charts, images) are skipped in Markdown. The
HTML has inline CSS and embeds images as base64 PNG, so it can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

import cv2
import numpy as np

__all__ = ["Heading", "Text", "Table", "Raw", "Block", "to_markdown", "to_html", "png_data_uri", "fmt", "md_escape"]


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str


@dataclass
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str | None = None


@dataclass
class Raw:
    """HTML-only content (charts, images); ``markdown`` is shown in its place in report.md."""

    html: str
    markdown: str | None = None
    classes: list[str] = field(default_factory=list)


Block = Heading | Text | Table | Raw


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats with ``digits`` significant decimals, None as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.4g}"
    return str(value)


def png_data_uri(image: np.ndarray) -> str:
    """An RGB or gray uint8 array as a ``data:image/png;base64,...`` URI."""
    array = image[:, :, ::-1] if image.ndim == 3 else image  # OpenCV encodes BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise ValueError(f"cannot encode an image of shape {image.shape} as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


# characters that make markup wherever they stand; "_" only at a word's edge (intraword it is
# literal in CommonMark, and topic names are full of it); "(", "!" and "#" are harmless once "["
# is escaped and the text is one line (a leading "#", "-", "+" or "=" is escaped separately)
_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def md_escape(text: str) -> str:
    """Plain text as Markdown that renders as that text: every character Markdown or inline HTML
    gives a meaning there is backslash-escaped, ``&`` becomes ``&amp;`` and line breaks become
    spaces; characters that are literal in their place stay readable (``frame(s)``, ``rgb_image``).

    Why: reports quote strings from bags (topic and frame names, frame ids, error texts), which
    anyone recording a bag chooses; ``<img src=x onerror=...>`` or ``[x](javascript:...)`` must
    not become markup in a viewer, and a ``|`` must not split a table row.
    """
    flat = " ".join(str(text).splitlines())
    escaped = _MD_SPECIAL.sub(r"\\\1", flat.replace("&", "&amp;"))
    return "\\" + escaped if escaped[:1] in ("-", "=", "+", "#") else escaped  # no list, underline, heading


def _md_cell(value: Any) -> str:
    return md_escape(fmt(value))


def to_markdown(title: str, blocks: Sequence[Block]) -> str:
    """Every text is escaped (:func:`md_escape`); only ``Raw.markdown`` is taken as it is, so its
    author escapes what it quotes."""
    lines = [f"# {md_escape(title)}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + md_escape(block.text), ""]
        elif isinstance(block, Text):
            lines += [md_escape(block.text), ""]
        elif isinstance(block, Table):
            if block.caption:
                lines += [md_escape(block.caption), ""]
            lines.append("| " + " | ".join(map(_md_cell, block.headers)) + " |")
            lines.append("|" + "---|" * len(block.headers))
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, Raw) and block.markdown:
            lines += [block.markdown, ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em;border-bottom:2px solid #4a7ab5;padding-bottom:.2em}
h2{font-size:1.25em;margin-top:1.8em;color:#2d4f7c}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#eef3f9}td:first-child,th:first-child{text-align:left}
caption{text-align:left;font-style:italic;padding:2px 0}
.charts{display:flex;flex-wrap:wrap;gap:12px}.frames td{text-align:center;vertical-align:top}
.frames img{display:block;margin:auto}p{line-height:1.45}code{background:#f3f3f3;padding:0 3px}
"""


def to_html(title: str, blocks: Sequence[Block]) -> str:
    body = [f"<h1>{escape(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            body.append(f"<p>{escape(block.text)}</p>")
        elif isinstance(block, Table):
            caption = f"<caption>{escape(block.caption)}</caption>" if block.caption else ""
            head = "".join(f"<th>{escape(str(h))}</th>" for h in block.headers)
            rows = "".join("<tr>" + "".join(f"<td>{escape(fmt(c))}</td>" for c in row) + "</tr>" for row in block.rows)
            body.append(f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Raw):
            cls = f' class="{" ".join(block.classes)}"' if block.classes else ""
            body.append(f"<div{cls}>{block.html}</div>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
