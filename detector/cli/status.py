"""``syncguard status``: what the store holds, per connector."""

from __future__ import annotations

import json
from typing import Any

import click

from detector.cli.options import json_option, pass_home
from detector.cli.table import format_table
from detector.home import Home
from detector.store import Store

__all__ = ["command", "connector_rows", "render_status"]

_HEADERS = ("connector", "kind", "syncs", "last sync", "last status", "rejects", "conflicts")


def connector_rows(home: Home) -> list[dict[str, Any]]:
    """Per-connector summary from the home's store (empty when there is no store yet, which
    is not created just to be read)."""
    if not home.store_path.exists():
        return []
    with Store.open(home.store_path) as store:
        return store.connector_status()


def render_status(rows: list[dict[str, Any]]) -> str:
    """The status table as text."""
    if not rows:
        return "no syncs stored yet: run `syncguard ingest FILE` first"
    body = [[r["connector_id"] or "(unnamed)", r["connector_kind"], r["syncs"], r["last_sync"],
             r["last_status"], r["rejects"], r["conflicts"]] for r in rows]
    return format_table(_HEADERS, body, right=(2, 5, 6))


@click.command("status")
@json_option
@pass_home
def command(home: Home, as_json: bool) -> None:
    """Show each connector's kind, stored syncs, last sync, rejects and conflicts.

    Connectors that only ever sent rejected records are listed too.
    """
    rows = connector_rows(home)
    click.echo(json.dumps(rows, indent=2) if as_json else render_status(rows))
