"""``syncguard check-freshness``: stale events for connectors that went quiet."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from detector.cli.options import actor_option, pass_home
from detector.cli.sinks import SinkChoice, describe_reports, open_sinks, sink_options
from detector.errors import EXIT_OK, EXIT_PAUSE, SyncguardError
from detector.freshness import freshness, stale_events
from detector.home import Home
from detector.policy import Policy, load_policy
from detector.store import Store, ledger

__all__ = ["command", "connector_policy"]


def connector_policy(home: Home) -> Policy:
    """The champion's connector policy (what scoring uses), else the built-in one."""
    from detector.model_cache import load_champion

    try:
        loaded, _version = load_champion(home)
        pol = loaded.config["policy"]
        return Policy(criticalities=pol["criticalities"], rules=tuple(pol["rules"]),
                      default_criticality=pol["default_criticality"])
    except (SyncguardError, KeyError, TypeError):
        return load_policy()


@click.command("check-freshness")
@sink_options
@actor_option
@pass_home
def command(home: Home, sinks: SinkChoice, actor: str) -> None:
    """Emit a connector_stale event for each connector with no sync for longer than its
    usual interval allows (a dead connector sends nothing to score).

    The usual interval is the median gap between the connector's recent syncs; it is
    overdue past 3 intervals and at least an hour late. Events go to the same sinks as
    `syncguard score`. Run it from cron.

    \b
    Exit status: 0 no connector overdue, 3 at least one overdue, 1/2 errors.
    """
    now = datetime.now(UTC)
    with Store.open(home.ensure().store_path) as store:
        table = freshness(store.conn, now)
        paused = set(ledger.open_pauses(store.conn))
        events = stale_events(table, now=now, policy=connector_policy(home), paused=paused)
        with store.atomic():
            for event in events:
                store.audit(actor=actor, action="stale", subject=event["connector_id"],
                            reason=f"no sync for {event['overdue_by_s'] / 3600:.1f} h past due",
                            details={"event_id": event["event_id"],
                                     "last_sync_at": event["last_sync_at"]})
            store.audit(actor=actor, action="check_freshness", subject="*",
                        reason=f"{len(events)} of {table.height} connectors overdue")
    with open_sinks(home, sinks) as opened:
        for _name, sink in opened:
            for event in events:
                sink.emit(event)
    click.echo(f"checked {table.height} connectors: {len(events)} overdue"
               + (": " + ", ".join(e["connector_id"] for e in events) if events else ""),
               err=True)
    for line in describe_reports(opened):
        click.echo(line, err=True)
    sys.exit(EXIT_PAUSE if events else EXIT_OK)
