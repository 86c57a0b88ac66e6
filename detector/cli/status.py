"""``syncguard status``: what the store holds, per connector: syncs, last decision, open
pause and freshness."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from detector.cli.options import json_option, pass_home
from detector.cli.table import format_table
from detector.home import Home
from detector.store import Store, ledger

__all__ = ["command", "connector_rows", "render_status"]

_HEADERS = ("connector", "kind", "syncs", "last sync", "last status", "last decision",
            "pause", "freshness", "rejects", "conflicts")


def _last_decisions(store: Store) -> dict[str, tuple[str, str]]:
    """Per connector: the decision and sync_id of its latest scored sync."""
    # SQLite takes the bare columns from the row holding max(started_ts).
    rows = store.conn.execute("SELECT connector_id, decision, sync_id, max(started_ts) "
                              "FROM scores GROUP BY connector_id")
    return {r[0]: (r[1], r[2]) for r in rows}


def _freshness_text(row: dict[str, Any]) -> str:
    if row.get("interval_s") is None:
        return "-"
    if row["overdue"]:
        return f"overdue {row['overdue_by_s'] / 3600:.1f} h"
    # A sync that started after "now" (the demo's clock is its window's end, to the
    # minute) is fresh, not "-0.0 h ago".
    return f"ok ({max(row['age_s'], 0.0) / 3600:.1f} h ago)"


def connector_rows(home: Home, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per-connector summary from the home's store (empty when there is no store yet, which
    is not created just to be read)."""
    if not home.store_path.exists():
        return []
    from detector.freshness import freshness  # polars work only when there is a store

    now = now or datetime.now(UTC)
    with Store.open(home.store_path) as store:
        rows = store.connector_status()
        decisions = _last_decisions(store)
        pauses = ledger.open_pauses(store.conn)
        fresh = {r["connector_id"]: r for r in freshness(store.conn, now).to_dicts()}
    for row in rows:
        cid = row["connector_id"]
        decision = decisions.get(cid)
        row["last_decision"] = decision[0] if decision else None
        row["last_scored_sync"] = decision[1] if decision else None
        pause = pauses.get(cid)
        row["open_pause"] = None if pause is None else {
            "id": pause.id, "reason": pause.reason, "opened_at": pause.opened_at,
            "opened_sync_id": pause.opened_sync_id}
        f = fresh.get(cid, {})
        row["freshness"] = {k: f.get(k) for k in ("interval_s", "age_s", "overdue_by_s",
                                                   "overdue")}
    return rows


def render_status(rows: list[dict[str, Any]]) -> str:
    """The status table as text, then one line per open pause."""
    if not rows:
        return "no syncs stored yet: run `syncguard ingest FILE` first"
    body = [[r["connector_id"] or "(unnamed)", r["connector_kind"], r["syncs"], r["last_sync"],
             r["last_status"], r.get("last_decision"),
             "OPEN" if r.get("open_pause") else None,
             _freshness_text(r.get("freshness") or {}), r["rejects"], r["conflicts"]]
            for r in rows]
    text = format_table(_HEADERS, body, right=(2, 8, 9))
    open_pauses = [r for r in rows if r.get("open_pause")]
    if open_pauses:
        text += "\n\nopen pauses (resume with `syncguard resume CONNECTOR --by WHO --reason TEXT`):"
        for r in open_pauses:
            p = r["open_pause"]
            text += (f"\n  {r['connector_id']}: {p['reason']} since {p['opened_at']} "
                     f"(sync {p['opened_sync_id'] or '-'})")
    return text


@click.command("status")
@json_option
@pass_home
def command(home: Home, as_json: bool) -> None:
    """Show each connector's kind, stored syncs, last sync, last decision, open pause,
    freshness, rejects and conflicts.

    Connectors that only ever sent rejected records are listed too.
    """
    rows = connector_rows(home)
    click.echo(json.dumps(rows, indent=2) if as_json else render_status(rows))
