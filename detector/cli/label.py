"""``syncguard label``: record whether a sync was a fault or normal (feeds training)."""

from __future__ import annotations

import click

from detector.cli.options import pass_home
from detector.home import Home
from detector.store import Store, ledger
from detector.store.audit import utc_now

__all__ = ["command"]


@click.command("label")
@click.argument("sync_id")
@click.argument("label", type=click.Choice(ledger.LABELS))
@click.option("--by", "by", required=True, metavar="WHO", help="Who labels (audited).")
@click.option("--reason", required=True, metavar="TEXT", help="Why (audited).")
@pass_home
def command(home: Home, sync_id: str, label: str, by: str, reason: str) -> None:
    """Label SYNC_ID as a fault or normal.

    Training leaves syncs labelled fault out of the fit; the latest label counts and
    every change is in the audit log.
    """
    with Store.open(home.ensure().store_path) as store:
        before = ledger.set_label(store.conn, sync_id, label, by=by, reason=reason,
                                  at=utc_now())
    was = f" (was {before.label})" if before is not None and before.label != label else ""
    click.echo(f"labelled {sync_id} {label}{was}")
