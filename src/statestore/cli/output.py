"""How the command line prints: tables and readable states for people, JSON for programs.

Tables, states and messages go to stdout; progress bars and errors go to stderr, so
``--json`` output stays clean even while a bar is drawn. Timestamps are shown as
integers (epoch milliseconds) with the UTC date beside them; JSON carries the integers only.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime as dt
import fractions
import json
import math
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.pretty import pretty_repr
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ..ops import Progress as ProgressCallback
from ..storage import WriterToken

__all__ = [
    "MAP_TAG",
    "MAX_DEPTH",
    "MAX_ITEMS",
    "MAX_STRING",
    "PIPE_WIDTH",
    "Output",
    "format_date",
    "format_size",
    "is_abbreviated",
    "to_json",
]

#: Width used when stdout is not a terminal, so piped tables are not wrapped at 80 columns.
PIPE_WIDTH = 160

# How ``show`` abbreviates large states unless ``--full``.
MAX_ITEMS = 20  # items shown per container
MAX_STRING = 200  # characters shown per str or bytes
MAX_DEPTH = 6  # nesting levels shown


class Output:
    """The one place that writes to stdout and stderr for a command."""

    def __init__(self) -> None:
        probe = Console()
        self.out = Console(width=None if probe.is_terminal else PIPE_WIDTH, highlight=False)
        self.err = Console(stderr=True, highlight=False)

    def json(self, value: Any) -> None:
        """Print one JSON document (``value`` already made of JSON types)."""
        sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False) + "\n")

    def line(self, text: str = "") -> None:
        """Print a line of plain text (no markup interpretation)."""
        self.out.print(text, markup=False, highlight=False, soft_wrap=True)

    def table(
        self, columns: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[str] = ()
    ) -> None:
        """Print a table; columns named in ``right`` are right-aligned (numbers)."""
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in columns:
            table.add_column(Text(column), justify="right" if column in right else "left")
        for row in rows:
            # Text, not str: Rich would read a run id like "[bold]x" or "ops[/]" as markup.
            table.add_row(*(Text(cell) for cell in row))
        with self.out.capture() as captured:
            self.out.print(table)
        # Rich pads the last column to its width; trailing blanks only get in the way.
        sys.stdout.write("".join(f"{line.rstrip()}\n" for line in captured.get().splitlines()))

    def state(self, value: Any, *, full: bool) -> None:
        """Print one entity state readably; abbreviated (MAX_ITEMS, ...) unless ``full``."""
        width = max(self.out.width, 40)
        if full:
            text = pretty_repr(value, max_width=width)
        else:
            text = pretty_repr(
                value,
                max_width=width,
                max_length=MAX_ITEMS,
                max_string=MAX_STRING,
                max_depth=MAX_DEPTH,
            )
        self.line(text)

    def confirm(self, question: str) -> bool:
        """Ask on the terminal; only ``y`` or ``yes`` says yes."""
        self.err.print(f"{question} [y/N] ", end="", markup=False)
        try:
            answer = input()
        except EOFError:
            return False
        return answer.strip().lower() in ("y", "yes")

    @contextlib.contextmanager
    def progress(self, description: str) -> Iterator[ProgressCallback]:
        """A progress bar on stderr while the block runs (drawn only on a terminal)."""
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.err,
            disable=not self.err.is_terminal,
            transient=False,
        )
        # The description may hold a run id: escaped, so Rich shows it as written.
        task = bar.add_task(escape(description), total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        with bar:
            yield update


def format_date(timestamp: int | None) -> str:
    """Epoch milliseconds as a UTC date, ``2024-05-01 12:00:00.000``; ``-`` when out of range."""
    if timestamp is None:
        return "-"
    try:
        moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=timestamp)
    except OverflowError:
        return "-"  # beyond year 9999: the integer is all there is
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def format_age(milliseconds: int) -> str:
    """A duration for people, to the unit that matters: ``42 s``, ``3 min``, ``2 h 5 min``,
    ``3 days 4 h``."""
    seconds = milliseconds // 1000
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours == 0:
        return f"{minutes} min"
    if days == 0:
        return f"{hours} h {minutes % 60} min"
    return f"{days:,} day{'s' if days > 1 else ''} {hours % 24} h"


def describe_writer(writer: WriterToken | None, now: int, problem: str | None = None) -> str:
    """The run's writer token and its age at ``now`` (epoch ms), as one phrase; or why it
    could not be read (``problem``)."""
    if problem is not None:
        return f"unreadable: {problem}"
    if writer is None:
        return "no writer has taken the run yet"
    if writer.taken_at is None:
        return f"token {writer.token}, taken at a time not recorded (by an older statestore)"
    date = format_date(writer.taken_at)
    if date == "-":  # a stored time past year 9999: not a clock's reading
        return f"token {writer.token}, taken at a time out of range ({writer.taken_at})"
    taken = f"token {writer.token}, taken {date} UTC"
    age = now - writer.taken_at
    if age < 0:  # another host's clock, or the server's, runs ahead of this one
        return f"{taken}, {format_age(-age)} ahead of this machine's clock"
    return f"{taken}, {format_age(age)} ago"


def format_size(size: int | None) -> str:
    """Bytes for people: ``902 B``, ``9.8 KiB``, ``1.2 MiB``; ``?`` when unknown."""
    if size is None:
        return "?"
    if abs(size) < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if abs(value) < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def is_abbreviated(value: Any, depth: int = 0) -> bool:
    """Whether ``show`` shortens this value (more than MAX_ITEMS, MAX_STRING, MAX_DEPTH)."""
    if isinstance(value, str | bytes):
        return len(value) > MAX_STRING
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        if len(value) > MAX_ITEMS:
            return True
        if value and depth >= MAX_DEPTH:
            return True
        items = [*value.keys(), *value.values()] if isinstance(value, Mapping) else list(value)
        return any(is_abbreviated(item, depth + 1) for item in items)
    return False


def to_json(value: Any) -> Any:
    """A decoded state as JSON types; what JSON cannot say exactly is written as a string.

    tuple, set and frozenset become lists (sets sorted when they can be); bytes become
    base64 text; datetime, date and time ISO 8601; timedelta seconds (float); Decimal,
    UUID and ints beyond 64 bits strings; nan and infinities ``"NaN"``, ``"Infinity"``,
    ``"-Infinity"``. A dict whose keys are all strings is an object; any other dict
    (and one whose only key is ``"__map__"``, which would read as this form) is
    ``{"__map__": [[key, value], ...]}`` in the dict's order, keys converted like values:
    ``{1: "a", "1": "b"}`` keeps both keys, ``{"__map__": [[1, "a"], ["1", "b"]]}``.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return _mapping_to_json(value)
    if isinstance(value, set | frozenset):
        items = [to_json(item) for item in value]
        with contextlib.suppress(TypeError):
            items.sort()
        return items
    if isinstance(value, list | tuple | collections.deque):
        return [to_json(item) for item in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal | uuid.UUID | fractions.Fraction):
        return str(value)
    return repr(value)


#: The one key of the JSON object that stands for a dict with keys that are not strings.
MAP_TAG = "__map__"


def _mapping_to_json(value: Mapping[Any, Any]) -> Any:
    """A str-keyed dict as an object; any other as tagged pairs, so no two keys merge
    (``str(1) == "1"``) and no key changes type unseen."""
    if all(isinstance(key, str) for key in value) and list(value) != [MAP_TAG]:
        return {key: to_json(item) for key, item in value.items()}
    return {MAP_TAG: [[to_json(key), to_json(item)] for key, item in value.items()]}


#: The columns of :func:`entity_size_rows`.
ENTITY_SIZE_COLUMNS = ["entity", "encoded", "stored", "compressed"]


def entity_size_rows(entities: Iterable[Any]) -> list[list[str]]:
    """One row per entity size (``ops.EntitySize``): how the command and the web view list
    a run's biggest entities."""
    return [
        [
            e.entity_id,
            format_size(e.encoded),
            format_size(e.stored),
            "yes" if e.compressed else "no",
        ]
        for e in entities
    ]
