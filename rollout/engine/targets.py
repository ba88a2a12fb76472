"""The target a plan names, as an adapter object the steps can use."""

from __future__ import annotations

from rollout.adapters.targets import LocalTarget, Target
from rollout.engine.plan import Plan


def build_target(plan: Plan) -> Target:
    spec = plan.model.target
    if spec.kind == "local":
        return LocalTarget()
    from rollout.adapters.supabase_target import SupabaseTarget

    return SupabaseTarget(spec.model_dump())
