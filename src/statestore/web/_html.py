"""HTML built from escaped parts: a ``str`` is always text, only :class:`Html` is markup.

Every run id, entity id and state is arbitrary text (``<script>`` is a valid run id), so
nothing is ever formatted into markup by hand: :func:`tag` escapes each ``str`` child and
attribute value, and a value becomes markup only by passing through it.
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rich.pretty import pretty_repr

from ..cli.output import MAX_DEPTH, MAX_ITEMS, MAX_STRING

__all__ = [
    "Html",
    "bar_chart",
    "join",
    "link",
    "page",
    "render_state",
    "table",
    "tag",
    "url",
]

#: At most this many characters of one state are shown; the rest is cut, and said so.
STATE_CHARS = 2_000

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
header{background:#1d3557;color:#fff;padding:.6em 1.2em}
header a{color:#fff;text-decoration:none;font-weight:600}
header .store{opacity:.8;margin-left:1em;font-family:monospace}
main{padding:1em 1.2em;max-width:1200px}
table{border-collapse:collapse;background:#fff;margin:.5em 0 1.2em}
th,td{border:1px solid #d5d9de;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eef1f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{margin:0;white-space:pre-wrap;word-break:break-all;max-width:40em;font-size:12px}
.ok{color:#1b7a3a;font-weight:600}.bad{color:#b3261e;font-weight:600}.muted{color:#6b7480}
.pager a,.pager span{margin-right:.8em}
form{margin:.6em 0}
svg{background:#fff;border:1px solid #d5d9de}
"""


class Html(str):
    """Markup that is already safe: made by :func:`tag`, never from outside text."""

    __slots__ = ()


def _render(child: Any) -> str:
    if child is None:
        return ""
    if isinstance(child, Html):
        return child
    if isinstance(child, (str, int)):
        return html.escape(str(child))
    return "".join(_render(item) for item in child)


def tag(name: str, /, *children: Any, **attrs: str | int | None) -> Html:
    """``<name attrs>children</name>``; ``class_`` is ``class``; None attributes are left out."""
    rendered = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{html.escape(str(value))}"'
        for key, value in attrs.items()
        if value is not None
    )
    return Html(f"<{name}{rendered}>{_render(children)}</{name}>")


def join(*children: Any) -> Html:
    """Children side by side, each escaped unless it is markup."""
    return Html(_render(children))


def url(path: str, **params: str | int | None) -> str:
    """A path with its query string; every value is percent-encoded."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return f"{path}?{query}" if query else path


def link(text: Any, path: str, **params: str | int | None) -> Html:
    return tag("a", text, href=url(path, **params))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], **attrs: str) -> Html:
    """A table; a cell that is an ``int`` is right-aligned."""
    head = tag("tr", [tag("th", h) for h in headers])
    body = [
        tag(
            "tr",
            [tag("td", cell, class_="num" if isinstance(cell, int) else None) for cell in row],
        )
        for row in rows
    ]
    return tag("table", tag("thead", head), tag("tbody", body), **attrs)


def page(title: str, store: str, *body: Any) -> Html:
    """A whole page: no script, no external resource; the CSS is inline."""
    head = join(
        Html('<meta charset="utf-8">'),
        Html('<meta name="viewport" content="width=device-width, initial-scale=1">'),
        tag("title", f"{title} - statestore"),
        tag("style", Html(_CSS)),
    )
    header = tag(
        "header",
        link("statestore", "/"),
        tag("span", store, class_="store"),
        tag("span", " read-only view", class_="store"),
    )
    return Html(
        "<!doctype html>"
        + tag("html", tag("head", head), tag("body", header, tag("main", tag("h1", title), body)))
    )


def render_state(state: object) -> Html:
    """A state as the command line shows it, escaped: nesting, long strings and long
    collections abbreviated, and at most :data:`STATE_CHARS` characters."""
    text = pretty_repr(
        state, max_width=100, max_length=MAX_ITEMS, max_string=MAX_STRING, max_depth=MAX_DEPTH
    )
    if len(text) > STATE_CHARS:
        text = text[:STATE_CHARS] + f"... ({len(text) - STATE_CHARS} more characters)"
    return tag("pre", text)


def bar_chart(
    labels: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[int]]],
    *,
    title: str,
    scale: Callable[[int], str] = str,
) -> Html:
    """Grouped bars as inline SVG: one group per label, one bar per series (name, colour,
    values); the tallest value fills the height and is written on the axis with ``scale``.
    Every bar has a tooltip with its label and exact value."""
    width, height, left, top_pad, bottom_pad = 760, 200, 70, 24, 22
    plot = height - top_pad - bottom_pad
    group = (width - left) / max(len(labels), 1)
    bar = max(group / (len(series) + 1), 1.0)
    top = max((max(values, default=0) for _n, _c, values in series), default=0) or 1
    shapes: list[Html] = []
    for i, label in enumerate(labels):
        for j, (name, colour, values) in enumerate(series):
            h = plot * values[i] / top
            shapes.append(
                tag(
                    "rect",
                    tag("title", f"{label}: {name} {values[i]:,} B"),
                    class_="bar",
                    x=f"{left + i * group + j * bar:.1f}",
                    y=f"{top_pad + plot - h:.1f}",
                    width=f"{bar:.1f}",
                    height=f"{h:.1f}",
                    fill=colour,
                )
            )
    text: dict[str, str | int] = {"font_size": 11, "fill": "#4a525c"}
    legend = [
        join(
            tag("rect", x=left + 130 * j, y=6, width=10, height=10, fill=colour),
            tag("text", name, x=left + 130 * j + 14, y=15, **text),
        )
        for j, (name, colour, _values) in enumerate(series)
    ]
    axis = join(
        tag("line", x1=left - 4, y1=top_pad, x2=width, y2=top_pad, stroke="#d5d9de"),
        tag("line", x1=left - 4, y1=top_pad + plot, x2=width, y2=top_pad + plot, stroke="#999"),
        tag("text", scale(top), x=left - 8, y=top_pad + 4, text_anchor="end", **text),
        tag("text", "0", x=left - 8, y=top_pad + plot + 4, text_anchor="end", **text),
        tag("text", labels[0] if labels else "", x=left, y=height - 6, **text),
        tag(
            "text",
            labels[-1] if len(labels) > 1 else "",
            x=width - 4,
            y=height - 6,
            text_anchor="end",
            **text,
        ),
    )
    return tag(
        "svg",
        tag("title", title),
        legend,
        axis,
        shapes,
        xmlns="http://www.w3.org/2000/svg",
        width=width,
        height=height,
        viewBox=f"0 0 {width} {height}",
        role="img",
    )
