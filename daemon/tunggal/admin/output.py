"""How commands print for people: rich tables in a terminal, plain aligned text when piped."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import click


def to_terminal() -> bool:
    return sys.stdout.isatty()


@dataclass
class Grid:
    """A table of text cells; `styles` holds an optional rich style per cell (terminal only)."""

    headers: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    styles: list[list[str | None]] = field(default_factory=list)
    title: str | None = None

    def add(self, cells: Sequence[str], styles: Sequence[str | None] | None = None) -> None:
        self.rows.append(list(cells))
        self.styles.append(list(styles) if styles is not None else [None] * len(cells))


def plain(grid: Grid) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    lines = [grid.headers, *grid.rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(grid.headers))]
    out = [grid.title] if grid.title else []
    for line in lines:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(line[:-1])]
        out.append("  ".join([*cells, line[-1]]).rstrip())
    return "\n".join(out)


def show(*grids: Grid, notes: Sequence[tuple[str, str | None]] = ()) -> None:
    """Print the grids, then `notes` (text, rich style) lines."""
    if to_terminal():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        console = Console()
        for grid in grids:
            # The title on its own line: as a table title rich wraps it to the table's width.
            if grid.title:
                console.print(Text(grid.title, style="bold underline"))
            table = Table(header_style="bold", box=None)
            for header in grid.headers:
                table.add_column(header, overflow="fold")
            for row, styles in zip(grid.rows, grid.styles, strict=True):
                table.add_row(*(Text(c, style=s or "") for c, s in zip(row, styles, strict=True)))
            console.print(table)
            console.print()
        for text, style in notes:
            console.print(Text(text, style=style or ""))
        return
    for grid in grids:
        click.echo(plain(grid))
        click.echo()
    for text, _ in notes:
        click.echo(text)
