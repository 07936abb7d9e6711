"""The one table printer of the bench command: a plain-text table for the
terminal, the same table as Markdown for ``docs/performance.md``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Table:
    """A titled table of already formatted cells."""

    title: str
    columns: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        """Append a row; each cell is turned into text with ``str``."""
        self.rows.append([str(c) for c in cells])

    def text(self) -> str:
        """Columns padded to their widest cell, the first left-aligned."""
        widths = [max(len(c) for c in col) for col in zip(self.columns, *self.rows, strict=True)]

        def line(cells):
            first, *rest = (str(c) for c in cells)
            padded = [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
            return "  ".join([first.ljust(widths[0]), *padded])

        body = [line(self.columns)] + [line(r) for r in self.rows]
        return "\n".join([self.title, *body, *self.notes])

    def markdown(self) -> str:
        """A Markdown table under a level-3 heading, notes as a list after it."""
        head = "| " + " | ".join(self.columns) + " |"
        rule = "|" + "|".join("---" for _ in self.columns) + "|"
        body = ["| " + " | ".join(r) + " |" for r in self.rows]
        notes = [f"- {n}" for n in self.notes]
        return "\n".join([f"### {self.title}", "", head, rule, *body, "", *notes]).rstrip() + "\n"


class Report:
    """Tables printed as they are made, and optionally written as one Markdown file."""

    def __init__(self, heading: str) -> None:
        self.heading = heading
        self.tables: list[Table] = []

    def show(self, table: Table) -> None:
        """Print ``table`` now and keep it for :meth:`write_markdown`."""
        print("\n" + table.text(), flush=True)
        self.tables.append(table)

    def write_markdown(self, path: str, preamble: str = "") -> None:
        """Write every table shown so far to ``path``."""
        parts = [f"# {self.heading}\n", preamble] + [t.markdown() for t in self.tables]
        with open(path, "w") as fh:
            fh.write("\n".join(p for p in parts if p))
