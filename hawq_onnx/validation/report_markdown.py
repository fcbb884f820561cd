"""report.md from the report's blocks; images by their path relative to the report."""

from __future__ import annotations

import os
from pathlib import Path

from hawq_onnx.validation.report_document import Block, Bullets, Heading, Image, Paragraph, Table


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(head: list[str], rows: list[list[str]], left: frozenset[int] = frozenset({0})) -> list[str]:
    align = [":---" if i in left else "---:" for i in range(len(head))]
    return ["| " + " | ".join(_cell(h) for h in head) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(_cell(c) for c in r) + " |" for r in rows)]


def to_markdown(blocks: list[Block], folder: Path) -> str:
    """The Markdown text; image links relative to ``folder``, where report.md lies."""
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Bullets):
            for item in block.items:
                text, sub = (item, []) if isinstance(item, str) else item
                lines.append(f"- {text}")
                lines += [f"  - {s}" for s in sub]
            lines.append("")
        elif isinstance(block, Table):
            lines += md_table(block.head, block.rows, block.left) + [""]
            if block.legend:
                lines += ["Columns: " + "; ".join(f"**{k}**: {v}" for k, v in block.legend) + ".", ""]
        elif isinstance(block, Image):
            rel = Path(os.path.relpath(block.path.absolute(), folder.absolute())).as_posix()
            lines += [f"![{block.alt}]({rel})", ""]
            if block.caption:
                lines += [f"*{block.caption}*", ""]
    return "\n".join(lines).rstrip("\n") + "\n"
