"""Everything the CLI prints: Rich tables and progress for people, JSON for machines.

Human output goes to stderr when ``--json`` is set so stdout stays a single JSON document.
"""
from __future__ import annotations

import json
import numbers
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table


class Output:
    """Per-invocation output settings (``--json``, ``-q``, ``-v``)."""

    def __init__(self, json_mode: bool = False, quiet: bool = False, verbose: bool = False):
        self.json_mode = json_mode
        self.quiet = quiet
        self.verbose = verbose
        # People read stderr when stdout carries JSON.
        self.console = Console(stderr=json_mode, highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message)

    def debug(self, message: str) -> None:
        if self.verbose:
            self.err.print(f"[dim]{message}[/dim]")

    def warn(self, message: str) -> None:
        """One line on stderr; -q hides it with everything else but errors."""
        if not self.quiet:
            self.err.print(f"[yellow]warning:[/yellow] {message}")

    def table(self, title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]], *,
              compact: bool = False) -> None:
        """A Rich table that never cuts a number or a name.

        Every column wraps, folding a long name onto more lines instead of ending it in an
        ellipsis, and is never narrower than the longest number in it (numeric columns are
        right-aligned). On a terminal the table fits its width as far as the numbers allow (a
        wider table wraps in the terminal, whole). Written to a pipe or file, where nobody resizes
        anything, it takes its natural width, whatever COLUMNS says: a log keeps every character.
        ``compact`` (light borders, one space between columns) suits wide tables.
        """
        if self.quiet:
            return
        raw_rows = [list(row) for row in rows]
        if compact:
            from rich import box

            table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                          padding=(0, 1, 0, 0))
        else:
            table = Table(title=title, title_justify="left")
        cells = [[_fmt(v) for v in row] for row in raw_rows]
        terminal = self.console.is_terminal
        for index, header in enumerate(columns):
            values = [row[index] for row in raw_rows if index < len(row) and row[index] not in (None, "")]
            numeric = bool(values) and all(_is_number(v) for v in values)
            # Rich shrinks the widest wrapping columns to fit the console and, as a last resort,
            # every column; min_width is the bound it keeps, so the longest number sets it, and a
            # numeric column gets a fixed width (its header may wrap), so names give way first.
            longest_number = max((len(word) for row in cells if index < len(row) for word in row[index].split()
                                  if _NUMBER.fullmatch(word.strip("()[],;:"))), default=0)
            fixed = max([longest_number, *map(len, header.split())]) if numeric and terminal else None
            table.add_column(header, justify="right" if numeric else "left", overflow="fold",
                             min_width=longest_number or None, width=fixed)
        for row in cells:
            table.add_row(*row)
        # Table.width overrides the console's width (80, or COLUMNS, off a terminal).
        table.width = _natural_width(self.console, table) if not terminal else _narrowest_whole(self.console, table)
        self.console.print(table)

    def emit_json(self, payload: Any) -> None:
        """Write the machine-readable result to stdout (only in --json mode)."""
        if self.json_mode:
            sys.stdout.write(json.dumps(payload, indent=2, default=json_default) + "\n")
            sys.stdout.flush()

    @contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[ProgressHandle]:
        """A progress bar (or spinner when ``total`` is None) on stderr; silent with -q."""
        if self.quiet:
            yield ProgressHandle(None, None)
            return
        if not self.err.is_terminal:  # pipes and CI: no redraws; step lines only with -v
            self.debug(f"{description} ...")
            yield ProgressHandle(None, None)
            return
        columns = [SpinnerColumn(), TextColumn("{task.description}")]
        if total is not None:
            columns += [BarColumn(), TextColumn("{task.completed}/{task.total}")]
        columns.append(TimeElapsedColumn())
        with Progress(*columns, console=self.err, transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield ProgressHandle(progress, task)


class ProgressHandle:
    def __init__(self, progress: Progress | None, task):
        self._progress = progress
        self._task = task

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, steps)

    def update(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=description)


_default = Output()


def default_output() -> Output:
    """The Output used by Python API calls that were not given one (quiet-ish, no JSON)."""
    return _default


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


# A number as the tables print it: 12, -3.5, 1,234,567, 1.2e-05, 97.5%, nan, inf.
_NUMBER = re.compile(r"[-+]?(\d[\d,]*(\.\d*)?|\.\d+)([eE][-+]?\d+)?%?|[-+]?(nan|inf)", re.IGNORECASE)

# Narrowest a name column gets (folded, whole) before a table outgrows a narrow terminal: a
# table wider than the terminal is wrapped by it, which scrambles the layout, so this is small.
_MIN_NAME_WIDTH = 4
# "No limit" for a table that is not written to a terminal.
_UNLIMITED = 1_000_000


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Number):  # numpy's scalars too
        return True
    return isinstance(value, str) and _NUMBER.fullmatch(value.strip()) is not None


def _natural_width(console: Console, table: Table) -> int:
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update_width(_UNLIMITED), table).maximum


def _narrowest_whole(console: Console, table: Table) -> int | None:
    """None when ``table`` fits the terminal with its numbers whole, else the width that keeps
    them so (names at ``_MIN_NAME_WIDTH``): past it Rich shrinks every column, numbers too."""
    saved = [column.max_width for column in table.columns]
    for column in table.columns:
        if column.width is None:
            column.max_width = max(_MIN_NAME_WIDTH, column.min_width or 0)
    needed = _natural_width(console, table)
    for column, width in zip(table.columns, saved):
        column.max_width = width
    return needed if needed > console.width else None


def json_default(obj: Any):
    """``json.dumps(default=...)`` for numpy values, Pydantic models and paths."""
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
