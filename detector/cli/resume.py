"""``syncguard resume``: close a connector's open pause, with who and why."""

from __future__ import annotations

import json

import click

from detector.cli.options import json_option, pass_home
from detector.home import Home
from detector.store import Store, ledger
from detector.store.audit import utc_now
from detector.store.state import accept_current

__all__ = ["command", "resume_connector"]


def resume_connector(store: Store, connector_id: str, *, by: str, reason: str,
                     false_positive: bool) -> ledger.Pause:
    """Close the open pause and make the connector's latest values its reference, in one
    transaction (see :func:`detector.store.state.accept_current`)."""
    now = utc_now()
    with store.atomic():
        pause = ledger.resume(store.conn, connector_id, by=by, reason=reason,
                              false_positive=false_positive, at=now)
        accept_current(store.conn, connector_id, now=now)
    return pause


@click.command("resume")
@click.argument("connector_id", metavar="CONNECTOR")
@click.option("--by", "by", required=True, metavar="WHO", help="Who resumes (audited).")
@click.option("--reason", required=True, metavar="TEXT", help="Why it is safe (audited).")
@click.option("--false-positive", is_flag=True,
              help="The pause was wrong: the syncs it held were normal (training keeps them).")
@json_option
@pass_home
def command(home: Home, connector_id: str, by: str, reason: str, false_positive: bool,
            as_json: bool) -> None:
    """Resume CONNECTOR: close its open pause so its syncs propagate again.

    The connector's latest values become the reference later syncs are judged against.
    Syncs of a pause not marked --false-positive are left out of training.
    """
    with Store.open(home.ensure().store_path) as store:
        pause = resume_connector(store, connector_id, by=by, reason=reason,
                                 false_positive=false_positive)
    if as_json:
        click.echo(json.dumps(pause.to_dict(), indent=2))
        return
    kind = "false positive" if pause.false_positive else "confirmed"
    click.echo(f"resumed {connector_id}: pause {pause.id} ({pause.reason}, opened at "
               f"{pause.opened_at} by sync {pause.opened_sync_id}) closed by {by} as {kind}")
