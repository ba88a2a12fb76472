"""`rollout flag list | get | set | history | kill` — feature flags for PMs and on-call.

The flag lives in the target database (`public.feature_flags`); every change is audited by
the database itself (who, when, from, to, why), so `history` shows changes made here, by a
plan's `flags.set` step or from the SQL console alike.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from rollout.cli.app import app, flag_option, out
from rollout.cli.release import _load, _resolve
from rollout.errors import UsageError
from rollout.paths import project_root

if TYPE_CHECKING:
    from rollout.adapters import flags
    from rollout.engine.plan import Plan

flag_app = typer.Typer(
    help="Feature flags (`messaging_v2_enabled`): percentages with sticky bucketing, audited. "
    "`rollout flag set messaging_v2_enabled 25` lets a quarter of users in; raising keeps "
    "everyone already in.",
    no_args_is_help=True,
)
app.add_typer(flag_app, name="flag")

PLAN_OPT = typer.Option(None, "--plan", help="The plan whose target to use "
                        "(default plans/local.yaml).")
ENV_OPT = typer.Option(None, "--env", help="Or an environment name: the plan in plans/*.yaml "
                       "with that `environment`.")
JSON_OPT = flag_option("--json", help="Print JSON on stdout instead.")
NAME_ARG = typer.Argument(..., metavar="NAME", show_default=False,
                          help="The flag's name, e.g. messaging_v2_enabled.")


def plan_for(plan: str | None, env: str | None, database_only: bool = True) -> Plan:
    """`--plan FILE`, or `--env NAME` (the plan in plans/ with that environment), or the default
    plans/local.yaml. Flags need only the database's variables (`database_only`)."""
    if plan and env:
        raise UsageError("give either --plan or --env, not both")
    if env:
        return _resolve(env, database_only)
    return _load(plan or str(project_root() / "plans" / "local.yaml"), database_only)


def db_url_for(plan: Plan, flags_table: bool = True) -> str:
    """The plan's target database, which must be running (flags never start a stack)."""
    from rollout.adapters import flags
    from rollout.engine.targets import build_target

    target = build_target(plan)
    if not target.reachable():
        raise UsageError(f"the {plan.model.target.kind} target of {plan.path.name} "
                         f"({plan.environment}) is not reachable",
                         hint="`rollout local up` starts the local stack; for Supabase check "
                              "DATABASE_URL")
    url = target.db_url
    if flags_table:
        flags.require_flags_table(url)
    return url


def _percentage(text: str) -> int:
    raw = text.strip().removesuffix("%")
    if not raw.isdigit() or not 0 <= int(raw) <= 100:
        raise UsageError(f"percentage must be a whole number from 0 to 100, got {text!r}")
    return int(raw)


def _print_json(value: Any) -> None:
    print(json.dumps(value, default=str, indent=2))


def _utc(value: datetime | None) -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}" if value else "-"


def _flag_dict(flag: flags.Flag) -> dict[str, Any]:
    return {"name": flag.name, "percentage": flag.percentage, "salt": flag.salt,
            "updated_at": flag.updated_at}


def _change(url: str, name: str, percentage: int, reason: str | None, allow_decrease: bool,
            json_output: bool, plan: Plan, verb: str) -> None:
    from rollout.adapters import flags
    from rollout.engine.runner import operator_name

    who = operator_name()
    if verb == "killed":
        change = flags.kill(url, name, actor=who, reason=reason or "kill switch")
    else:
        change = flags.set_flag(url, name, percentage, actor=who, reason=reason,
                                allow_decrease=allow_decrease)
    if json_output:
        _print_json({"environment": plan.environment, "flag": change.name, "from": change.before,
                     "to": change.after, "users_in": change.users_in,
                     "users_total": change.users_total, "changed_by": who, "reason": reason,
                     "changed": change.before != change.after})
        return
    if change.before == change.after:
        out.print(f"{name} is already at {change.after}% on {plan.environment} (nothing changed)")
    else:
        color = "red" if verb == "killed" else "green"
        out.print(f"[{color}]{name} {verb}: {change.before}% → {change.after}%[/{color}] on "
                  f"{plan.environment} by {who}" + (f" ({reason})" if reason else ""))
    out.print(f"{change.users_in} of {change.users_total} known users are now in")


@flag_app.command("list")
def list_command(plan: str = PLAN_OPT, env: str = ENV_OPT,
                 json_output: bool = JSON_OPT) -> None:
    """Every flag of the target with its percentage."""
    from rollout.adapters import flags

    loaded = plan_for(plan, env)
    found = flags.list_flags(db_url_for(loaded))
    if json_output:
        _print_json([_flag_dict(f) for f in found])
        return
    table = Table("flag", "percentage", "updated (UTC)",
                  title=f"feature flags on {loaded.environment}")
    for flag in found:
        table.add_row(flag.name, f"{flag.percentage}%", _utc(flag.updated_at))
    out.print(table)


@flag_app.command("get")
def get_command(name: str = NAME_ARG, plan: str = PLAN_OPT, env: str = ENV_OPT,
                json_output: bool = JSON_OPT) -> None:
    """One flag: its percentage and its last change."""
    from rollout.adapters import flags

    loaded = plan_for(plan, env)
    url = db_url_for(loaded)
    flag = flags.get_flag(url, name)
    last = flags.history(url, name, limit=1)
    if json_output:
        _print_json({**_flag_dict(flag), "last_change": last[0] if last else None})
        return
    out.print(f"{flag.name} = [bold]{flag.percentage}%[/bold] on {loaded.environment}")
    if last:
        row = last[0]
        out.print(f"last change {_utc(row['changed_at'])} UTC by {row['changed_by']}: "
                  f"{row['from_percentage']}% → {row['to_percentage']}%"
                  + (f" ({row['reason']})" if row["reason"] else ""))


@flag_app.command("set")
def set_command(
    name: str = NAME_ARG,
    percentage: str = typer.Argument(..., metavar="PERCENT", show_default=False,
                                     help="0–100 (a trailing % is fine)."),
    reason: str = typer.Option(None, "--reason", help="Why: kept in the audit trail."),
    allow_decrease: bool = flag_option("--allow-decrease",
                                        help="Allow lowering it (takes users out)."),
    plan: str = PLAN_OPT,
    env: str = ENV_OPT,
    json_output: bool = JSON_OPT,
) -> None:
    """Set a flag's rollout percentage; prints how many known users are now in.

    Raising keeps everyone already in (sticky buckets). Lowering takes users out, so it needs
    `--allow-decrease` (exit 2 otherwise, nothing changed); in an incident use `rollout flag kill`.
    """
    loaded = plan_for(plan, env)
    url = db_url_for(loaded)
    _change(url, name, _percentage(percentage), reason, allow_decrease, json_output, loaded,
            "set")


@flag_app.command("kill")
def kill_command(
    name: str = NAME_ARG,
    reason: str = typer.Option("kill switch", "--reason", help="Why: kept in the audit trail."),
    plan: str = PLAN_OPT,
    env: str = ENV_OPT,
    json_output: bool = JSON_OPT,
) -> None:
    """Incident kill switch: set the flag to 0% at once (always allowed, audited)."""
    loaded = plan_for(plan, env)
    url = db_url_for(loaded)
    _change(url, name, 0, reason, True, json_output, loaded, "killed")


@flag_app.command("history")
def history_command(
    name: str = NAME_ARG,
    limit: int = typer.Option(50, help="How many changes, newest first."),
    plan: str = PLAN_OPT,
    env: str = ENV_OPT,
    json_output: bool = JSON_OPT,
) -> None:
    """Every change of a flag: when, who, from, to, why (the database's audit trail)."""
    from rollout.adapters import flags

    loaded = plan_for(plan, env)
    url = db_url_for(loaded, flags_table=False)  # after a rollback the audit is archived
    rows = flags.history(url, name, limit)
    if not rows:
        flags.require_flags_table(url)
        flags.get_flag(url, name)
    if json_output:
        _print_json(rows)
        return
    table = Table("when (UTC)", "who", "from", "to", "reason",
                  title=f"{name} on {loaded.environment}")
    for row in rows:
        before = row["from_percentage"]
        table.add_row(_utc(row["changed_at"]), row["changed_by"],
                      "-" if before is None else f"{before}%", f"{row['to_percentage']}%",
                      row["reason"] or "")
    out.print(table)

