"""`rollout load PLAN --prepare-k6-operator DIR` and its cleanup: the load beyond one machine.

Kept apart from `checks_cmd.load` (which only dispatches here) so the local k6 run and the
k6-operator path change independently.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rollout.cli.app import out
from rollout.cli.release import _confirm_production
from rollout.paths import project_root

if TYPE_CHECKING:
    from rollout.checks.k6 import LoadParams
    from rollout.engine.plan import Plan


def plan_label(plan: Plan) -> str:
    """The plan as the manifests name it: relative to the project, never a local absolute path."""
    try:
        return str(plan.path.resolve().relative_to(project_root()))
    except ValueError:
        return plan.path.name


def sized(plan: Plan, seed_scale: bool, parallelism: int | None) -> LoadParams:
    from rollout.checks.k6_operator import seed_params
    from rollout.workflows.rehearsal import load_params

    params = seed_params() if seed_scale else load_params(plan)
    if parallelism is not None:
        params.parallelism = parallelism
    return params


def emit(plan: Plan, params: LoadParams, out_file: Path) -> None:
    from rollout.checks.k6_operator import write_testrun

    path = write_testrun(params, out_file, plan=plan_label(plan))
    out.print(f"wrote {path} (k6-operator TestRun, {params.parallelism} runner(s)); its "
              f"ConfigMap, Secrets and users: rollout load {plan_label(plan)} "
              "--prepare-k6-operator DIR")


def prepare(plan: Plan, params: LoadParams, out_dir: Path, token_ttl: str, yes: bool) -> None:
    from rollout.checks import k6_operator
    from rollout.checks.k6 import default_script
    from rollout.engine.targets import build_target

    ttl = int(k6_operator.seconds(token_ttl))
    k6_operator.testrun_manifest(params)  # refuse bad sizing before touching the target
    k6_operator.check_token_ttl(params, ttl)
    _confirm_production(plan, yes, "seed load users and mint their tokens")
    target = build_target(plan)
    target.prepare()
    script = default_script()  # as `rollout load` runs it
    done = k6_operator.prepare(target.api_url, target.anon_key, target.jwt_secret,
                               target.db_url, params, script, out_dir, token_ttl=ttl,
                               plan=plan_label(plan))
    users = ", ".join(f"{n} {kind}" for kind, n in done.users.items())
    out.print(f"seeded load users in {plan.environment}: {users}")
    for path in done.files:
        out.print(f"wrote {path}")
    out.print(f"tokens expire at {done.expires_at:%Y-%m-%d %H:%M} UTC: create the TestRun "
              f"before {done.start_before:%H:%M} UTC ({done.secrets} Secret(s) in "
              f"{k6_operator.SECRET_FILE}, mode 0600, git-ignored: never commit it)")
    out.print(f"next: kubectl apply --server-side -f {out_dir / k6_operator.CONFIGMAP_FILE} "
              f"-f {out_dir / k6_operator.SECRET_FILE} && kubectl create -f "
              f"{out_dir / k6_operator.TESTRUN_FILE}")
    if any(host in target.api_url for host in ("127.0.0.1", "localhost", "[::1]")):
        out.print(f"[yellow]note: the API URL is local to this machine ({target.api_url}); "
                  "pods in a cluster cannot reach it[/yellow]")
    out.print(f"afterwards: rollout load {plan_label(plan)} --remove-k6-operator-users")


def remove(plan: Plan, yes: bool) -> None:
    from rollout.checks import k6_operator
    from rollout.engine.targets import build_target

    _confirm_production(plan, yes, "delete the load users")
    target = build_target(plan)
    target.prepare()
    removed = k6_operator.remove(target.db_url)
    rows = ", ".join(f"{n} {table}" for table, n in removed.items() if n) or "nothing"
    out.print(f"removed the load users from {plan.environment}: {rows}; the tokens in the "
              f"Secrets are now useless (kubectl delete -f {k6_operator.SECRET_FILE})")
