"""The pages of ``statestore serve``: runs, a run, a savepoint, a diff, verify.

Every page reads through the public Storage API and :mod:`statestore.ops`; none writes.
Parameters travel in the query string (run ids are arbitrary text, slashes included),
and every page of entities is cut to :data:`PAGE_SIZE` rows: only those are decoded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from .. import ops
from ..cli.output import (
    ENTITY_SIZE_COLUMNS,
    describe_writer,
    entity_size_rows,
    format_date,
    format_size,
)
from ..errors import (
    CorruptSavepointError,
    InvalidArgumentError,
    NoSavepointError,
    StateStoreError,
)
from ..storage import EncodedSavepoint, Storage, epoch_ms, validate
from ._data import Diff, VerifyCache, diff_savepoints, size_changes
from ._html import Html, bar_chart, join, link, page, render_state, table, tag

__all__ = ["LOOPBACK_HOSTS", "PAGE_SIZE", "RUNS_SIZE", "create_app"]

#: Rows of entities on one page of a savepoint or a diff.
PAGE_SIZE = 50
#: Runs on one page of the runs page.
RUNS_SIZE = 100
#: Entities in a run's lists of the biggest and the most grown.
TOP = 10
#: Savepoints in a run's chart and on one page of its timeline.
TIMELINE_SIZE = 60
#: Host header values always accepted: this machine's own names.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

#: No script, nothing from elsewhere, no framing: the page is text and inline CSS/SVG.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class _PageError(Exception):
    """A page that cannot be shown: its HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Pages:
    """The handlers, sharing one storage, its label and the verify cache."""

    def __init__(self, storage: Storage, store: str) -> None:
        self.storage = storage
        self.store = store
        self.verified = VerifyCache()

    def respond(self, render: Callable[[Request], tuple[str, Html]]) -> Callable[..., Response]:
        def endpoint(request: Request) -> Response:
            try:
                title, body = render(request)
                status = 200
            except _PageError as exc:
                title, body, status = "Not shown", tag("p", str(exc), class_="bad"), exc.status
            except NoSavepointError as exc:
                title, body, status = "Not found", tag("p", str(exc), class_="bad"), 404
            except InvalidArgumentError as exc:
                title, body, status = "Bad request", tag("p", str(exc), class_="bad"), 400
            except CorruptSavepointError as exc:
                title, body, status = "Damaged", tag("p", str(exc), class_="bad"), 500
            except StateStoreError as exc:
                title, body, status = "Store error", tag("p", str(exc), class_="bad"), 500
            return HTMLResponse(page(title, self.store, body), status, headers=_HEADERS)

        return endpoint

    # ---------------------------------------------------------------- the pages

    def runs(self, request: Request) -> tuple[str, Html]:
        # Only the runs of this page are summarized: sizing a run reads its manifests.
        shown, pager = _paginate(self.storage.list_runs(), _page(request), RUNS_SIZE, request)
        summaries = []
        for run_id in shown:
            try:
                summaries.append(ops.run_summary(self.storage, run_id))
            except NoSavepointError:
                continue  # deleted between the listing and the look
        rows = [
            [
                link(summary.run_id, "/run", run=summary.run_id),
                summary.savepoints if summary.savepoints is not None else "-",
                format_date(summary.latest_timestamp),
                format_size(summary.size),
                self._health(summary.run_id, summary.damaged),
            ]
            for summary in summaries
        ]
        checked = self.verified.get(None)
        return "Runs", join(
            table(["run", "savepoints", "latest (UTC)", "size", "health"], rows, id="runs")
            if rows
            else tag("p", "This store has no run.", class_="muted"),
            pager,
            tag(
                "p",
                link("Verify every run", "/verify"),
                tag(
                    "span",
                    f" (last checked {_when(checked.at)})" if checked else "",
                    class_="muted",
                ),
            ),
        )

    def run(self, request: Request) -> tuple[str, Html]:
        run_id = self._run_id(request)
        stats = ops.run_stats(self.storage, run_id, top=TOP)
        savepoints = stats.savepoints
        writer = tag(
            "p",
            "Writer: ",
            describe_writer(stats.writer, epoch_ms(), stats.writer_problem),
            ". ",
            tag(
                "span",
                "The job that started or resumed the run last holds its token; a save by "
                "an older holder is refused.",
                class_="muted",
            ),
            id="writer",
        )
        if not savepoints:
            return f"Run {run_id}", join(
                tag("p", "This run has no savepoint yet.", class_="muted"), writer
            )
        newest_first = list(reversed(savepoints))
        shown, pager = _paginate(newest_first, _page(request), TIMELINE_SIZE, request, run=run_id)
        recent = savepoints[-TIMELINE_SIZE:]
        chart = bar_chart(
            [format_date(s.timestamp) for s in recent],
            [
                ("written", "#e07a1f", [s.size for s in recent]),
                ("all states", "#457b9d", [s.state_bytes for s in recent]),
            ],
            title="Bytes written by each savepoint and the encoded size of all its states",
            scale=format_size,
        )
        timeline = table(
            [
                "savepoint",
                "date (UTC)",
                "entities",
                "states written / reused",
                "written",
                "all states",
                "growth",
                "",
            ],
            [
                [
                    link(s.timestamp, "/savepoint", run=run_id, ts=s.timestamp),
                    format_date(s.timestamp),
                    s.entity_count,
                    f"{s.states_written:,} / {s.states_reused:,}",
                    format_size(s.size),
                    format_size(s.state_bytes),
                    "-" if s.growth is None else f"{s.growth:+,} B",
                    _diff_link(run_id, newest_first, s.timestamp),
                ]
                for s in shown
            ],
            id="timeline",
        )
        biggest = table(ENTITY_SIZE_COLUMNS, entity_size_rows(stats.biggest), id="biggest")
        health = self.verified.health(run_id)
        return f"Run {run_id}", join(
            tag(
                "p",
                f"{len(savepoints)} savepoints, {stats.entity_count} entities in the latest, "
                f"{format_size(stats.size)} stored. Health: ",
                self._health(run_id, None),
                " ",
                link("verify now" if health is None else "verify again", "/verify", run=run_id),
            ),
            writer,
            tag("h2", "Timeline"),
            chart,
            tag(
                "p",
                "'written' is what a savepoint added to the store (an incremental "
                "savepoint stores only changed states, and reuses the others from earlier "
                "savepoints' packs); 'all states' their encoded size.",
                class_="muted",
            ),
            timeline,
            pager,
            self._diff_form(run_id, newest_first),
            tag("h2", "Biggest entities (latest savepoint)"),
            biggest,
            self._size_changes(run_id, savepoints),
        )

    def savepoint(self, request: Request) -> tuple[str, Html]:
        run_id = self._run_id(request)
        timestamp = _int_param(request, "ts")
        encoded = self.storage.read_encoded_savepoint(
            ops.require_run(self.storage, run_id), timestamp
        )
        query = request.query_params.get("q", "")
        rows = [(e, data) for e, data in encoded.entities if query in e]
        shown, pager = _paginate(
            rows, _page(request), PAGE_SIZE, request, run=run_id, ts=timestamp, q=query or None
        )
        states = self._decode(run_id, encoded, shown)
        search = tag(
            "form",
            tag("input", type="hidden", name="run", value=run_id),
            tag("input", type="hidden", name="ts", value=timestamp),
            tag("input", type="search", name="q", value=query, placeholder="entity id contains"),
            tag("button", "Filter", type="submit"),
            method="get",
            action="/savepoint",
        )
        return f"Savepoint {timestamp} of run {run_id}", join(
            tag(
                "p",
                f"{format_date(timestamp)} UTC, {len(encoded.entities)} entities, codec "
                f"{encoded.codec}. ",
                link("back to the run", "/run", run=run_id),
            ),
            search,
            table(
                ["entity", "encoded", "state"],
                [
                    [e, format_size(len(data)), state]
                    for (e, data), state in zip(shown, states, strict=True)
                ],
                id="entities",
            ),
            pager,
        )

    def diff(self, request: Request) -> tuple[str, Html]:
        run_id = ops.require_run(self.storage, self._run_id(request))
        old_ts, new_ts = _int_param(request, "from"), _int_param(request, "to")
        old = self.storage.read_encoded_savepoint(run_id, old_ts)
        new = self.storage.read_encoded_savepoint(run_id, new_ts)
        found = diff_savepoints(old, new)
        rows = _diff_rows(found)
        shown, pager = _paginate(
            rows, _page(request), PAGE_SIZE, request, run=run_id, **{"from": old_ts, "to": new_ts}
        )
        before = dict(old.entities)
        after = dict(new.entities)
        old_states = self._decode(run_id, old, [(e, before[e]) for k, e in shown if k != "added"])
        new_states = self._decode(run_id, new, [(e, after[e]) for k, e in shown if k != "removed"])
        cells = []
        for kind, entity_id in shown:
            left = old_states.pop(0) if kind != "added" else tag("span", "-", class_="muted")
            right = new_states.pop(0) if kind != "removed" else tag("span", "-", class_="muted")
            cells.append([kind, entity_id, left, right])
        return f"Diff of run {run_id}: {old_ts} to {new_ts}", join(
            tag(
                "p",
                f"{len(found.added)} added, {len(found.removed)} removed, "
                f"{len(found.changed)} changed, {found.unchanged} unchanged. ",
                link("back to the run", "/run", run=run_id),
            ),
            table(["change", "entity", f"at {old_ts}", f"at {new_ts}"], cells, id="diff")
            if cells
            else tag("p", "The two savepoints hold the same states.", class_="muted"),
            pager,
        )

    def verify(self, request: Request) -> tuple[str, Html]:
        run = request.query_params.get("run")
        run_id = None if run is None else ops.require_run(self.storage, run)
        checked = self.verified.get(run_id)
        if checked is None or request.query_params.get("fresh") == "1":
            checked = self.verified.check(self.storage, run_id)
        report = checked.report
        verdict = (
            tag("p", "Intact: every checksum holds and every state decodes.", class_="ok")
            if report.ok
            else tag("p", f"Damaged: {len(report.damage)} savepoint(s).", class_="bad")
        )
        damage = table(
            ["run", "savepoint", "error"],
            [
                [d.run_id, "-" if d.timestamp is None else d.timestamp, d.error]
                for d in report.damage
            ],
        )
        what = "the store" if run_id is None else f"run {run_id}"
        return f"Verify {what}", join(
            verdict,
            tag(
                "p",
                f"{report.runs} run(s), {report.savepoints} savepoint(s) checked "
                f"{_when(checked.at)}"
                + (
                    f"; {report.undecoded} written with a codec this store was not opened "
                    "with (checksums only)"
                    if report.undecoded
                    else ""
                )
                + ". ",
                link("check again", "/verify", run=run_id, fresh=1),
            ),
            damage if report.damage else "",
        )

    # ---------------------------------------------------------------- helpers

    def _run_id(self, request: Request) -> str:
        run = request.query_params.get("run")
        if run is None:
            raise _PageError(400, "the run parameter is missing")
        return validate.run_id(run)

    def _health(self, run_id: str, damaged: str | None) -> Html:
        if damaged is not None:
            return tag("span", "damaged", class_="bad", title=damaged)
        health = self.verified.health(run_id)
        if health is None:
            return tag("span", "not verified", class_="muted")
        intact, at = health
        if intact:
            return tag("span", "intact", class_="ok", title=f"verified {_when(at)}")
        return tag("span", "damaged", class_="bad", title=f"verified {_when(at)}")

    def _decode(
        self, run_id: str, encoded: EncodedSavepoint, rows: Sequence[tuple[str, bytes]]
    ) -> list[Html]:
        """The shown states only, decoded and rendered; one that does not decode says why."""
        if not self.storage.can_decode(encoded.codec):
            note = f"written by codec {encoded.codec}, not decoded here"
            return [tag("span", note, class_="muted") for _row in rows]
        shown = []
        for entity_id, data in rows:
            try:
                one = EncodedSavepoint(encoded.timestamp, encoded.codec, [(entity_id, data)])
                ((_e, state),) = self.storage.decode_encoded_savepoint(run_id, one).entities
                shown.append(render_state(state))
            except StateStoreError as exc:
                shown.append(tag("span", str(exc), class_="bad"))
        return shown

    def _size_changes(self, run_id: str, savepoints: Sequence[Any]) -> Html:
        """The entities whose size changed most since the savepoint before the latest."""
        if len(savepoints) < 2:
            return Html("")
        old_ts, new_ts = savepoints[-2].timestamp, savepoints[-1].timestamp
        try:
            changes = size_changes(self.storage, run_id, old_ts, new_ts, TOP)
        except NoSavepointError:
            return Html("")  # pruned since the listing: nothing to compare
        rows = [
            [
                c.entity_id,
                "-" if c.before is None else format_size(c.before),
                "-" if c.after is None else format_size(c.after),
                f"{c.change:+,} B",
            ]
            for c in changes
        ]
        return join(
            tag("h2", "Biggest size changes (latest savepoint against the one before)"),
            table(["entity", f"at {old_ts}", f"at {new_ts}", "change"], rows, id="changes")
            if rows
            else tag("p", "No entity changed size.", class_="muted"),
        )

    def _diff_form(self, run_id: str, newest_first: list[Any]) -> Html:
        choices = [s.timestamp for s in newest_first[:500]]

        def select(name: str, chosen: int) -> Html:
            options = [
                tag(
                    "option",
                    f"{ts} ({format_date(ts)})",
                    value=ts,
                    selected="selected" if ts == chosen else None,
                )
                for ts in choices
            ]
            return tag("select", options, name=name)

        older = choices[1] if len(choices) > 1 else choices[0]
        return join(
            tag("h2", "Compare two savepoints"),
            tag(
                "form",
                tag("input", type="hidden", name="run", value=run_id),
                select("from", older),
                " to ",
                select("to", choices[0]),
                " ",
                tag("button", "Diff", type="submit"),
                method="get",
                action="/diff",
            ),
        )


def _diff_link(run_id: str, newest_first: list[Any], timestamp: int) -> Html | str:
    """A link to the diff with the savepoint before this one, if there is one."""
    stamps = [s.timestamp for s in newest_first]
    at = stamps.index(timestamp)
    if at + 1 >= len(stamps):
        return ""
    return link(
        "diff with previous", "/diff", run=run_id, **{"from": stamps[at + 1], "to": timestamp}
    )


def _diff_rows(found: Diff) -> list[tuple[str, str]]:
    return (
        [("changed", e) for e in found.changed]
        + [("added", e) for e in found.added]
        + [("removed", e) for e in found.removed]
    )


def _when(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("at %Y-%m-%d %H:%M:%S UTC")


def _int_param(request: Request, name: str) -> int:
    value = request.query_params.get(name)
    if value is None or not value.isdigit() or len(value) > 19:
        raise _PageError(400, f"the {name} parameter must be a timestamp (an integer >= 0)")
    return validate.timestamp(int(value))


def _page(request: Request) -> int:
    value = request.query_params.get("page", "1")
    if not value.isdigit() or len(value) > 9 or int(value) < 1:
        raise _PageError(400, "the page parameter must be an integer >= 1")
    return int(value)


def _paginate(
    items: Sequence[Any], number: int, size: int, request: Request, **params: Any
) -> tuple[Sequence[Any], Html]:
    """One page of ``items`` and the links to the pages around it."""
    pages = max((len(items) + size - 1) // size, 1)
    if number > pages:
        raise _PageError(404, f"there is no page {number} (there are {pages})")
    shown = items[(number - 1) * size : number * size]
    path = request.url.path
    parts: list[Any] = [tag("span", f"page {number} of {pages} ({len(items)} rows)")]
    if number > 1:
        parts.insert(0, link("previous", path, **params, page=number - 1))
    if number < pages:
        parts.append(link("next", path, **params, page=number + 1))
    return shown, tag("p", parts, class_="pager")


def create_app(storage: Storage, *, store: str, allowed_hosts: Sequence[str] = ()) -> Starlette:
    """The web view of ``storage`` as an ASGI application; ``store`` names it on every page
    (a URL already redacted). Requests whose ``Host`` is not this machine's own name or one
    of ``allowed_hosts`` are refused with 400: binding to loopback does not stop a web page
    elsewhere from reaching the server through a name it controls (DNS rebinding).
    """
    pages = _Pages(storage, store)
    routes = [
        Route(path, pages.respond(render), methods=["GET"])
        for path, render in [
            ("/", pages.runs),
            ("/run", pages.run),
            ("/savepoint", pages.savepoint),
            ("/diff", pages.diff),
            ("/verify", pages.verify),
        ]
    ]
    hosts = list(dict.fromkeys([*LOOPBACK_HOSTS, *allowed_hosts]))
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)]
    return Starlette(routes=routes, middleware=middleware)
