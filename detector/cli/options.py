"""Options shared by several commands, declared once."""

from __future__ import annotations

import click

from detector.store.audit import default_actor

__all__ = ["json_option", "actor_option", "pass_home"]

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print machine-readable JSON on stdout instead of a table.")

actor_option = click.option("--actor", metavar="NAME", default=default_actor,
                            show_default="the OS user",
                            help="Who is acting, as recorded in the audit log.")

pass_home = click.pass_obj
"""Decorator giving a command the resolved :class:`detector.home.Home`."""
