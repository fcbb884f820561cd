"""report.html from the report's blocks: one self-contained file.

Every image is embedded as a base64 ``data:`` URI and the style sheet is inline, so the file
can be mailed or attached to a ticket alone and opens without network or JavaScript.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from hawq_onnx.validation.report_document import Block, Bullets, Heading, Image, Paragraph, Table

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; line-height: 1.45;
       color: #222; max-width: 1100px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #d1495b; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: .15em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { background: #f4f4f4; padding: 0 .25em; border-radius: 3px; font-size: .92em; word-break: break-all; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; font-style: italic; }
dl.legend { font-size: .85em; color: #444; margin: .3em 0 1em; }
dl.legend dt { font-weight: 600; float: left; clear: left; margin-right: .5em; }
dl.legend dd { margin: 0 0 .2em 0; }
"""
_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def inline(text: str) -> str:
    """Escaped text with the blocks' two marks, `code` and **bold**, as HTML."""
    out = html.escape(str(text), quote=True)
    out = _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", out)
    return _BOLD.sub(lambda m: f"<strong>{m.group(1)}</strong>", out)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _table(block: Table) -> list[str]:
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{inline(h)}</th>" for h in block.head) + "</tr></thead>",
           "<tbody>"]
    for row in block.rows:
        cells = "".join(f"<td>{inline(c)}</td>" if i in block.left else f'<td class="num">{inline(c)}</td>'
                        for i, c in enumerate(row))
        out.append(f"<tr>{cells}</tr>")
    out += ["</tbody>", "</table>"]
    if block.legend:
        out.append('<dl class="legend">' + "".join(f"<dt>{inline(k)}</dt><dd>{inline(v)}</dd>"
                                                   for k, v in block.legend) + "</dl>")
    return out


def to_html(blocks: list[Block]) -> str:
    """The whole page; the first level-1 heading is also its title."""
    title = next((b.text for b in blocks if isinstance(b, Heading) and b.level == 1), "hawq-onnx report")
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>")
            for item in block.items:
                text, sub = (item, []) if isinstance(item, str) else item
                inner = "".join(f"<li>{inline(s)}</li>" for s in sub)
                body.append(f"<li>{inline(text)}" + (f"<ul>{inner}</ul>" if sub else "") + "</li>")
            body.append("</ul>")
        elif isinstance(block, Table):
            body += _table(block)
        elif isinstance(block, Image):
            caption = f"<figcaption>{inline(block.caption)}</figcaption>" if block.caption else ""
            body.append(f'<figure><img src="{data_uri(block.path)}" alt="{html.escape(block.alt, quote=True)}">'
                        f"{caption}</figure>")
    return "\n".join(['<!DOCTYPE html>', '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
                      *body, "</body>", "</html>", ""])
