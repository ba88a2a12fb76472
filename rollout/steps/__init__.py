"""Step kinds, by name. Each module owns one family; `KINDS` is the registry plans use."""

from rollout.steps.base import Background, Step, StepContext
from rollout.steps.checks import CheckLoad, CheckSmoke
from rollout.steps.db import DbBackup, DbMaintenance, DbMigrate, DbSeed, DbVerify
from rollout.steps.edge import EdgeDeploy, EdgeSecrets
from rollout.steps.flags import FlagsSet
from rollout.steps.gates import GateAnalysis, GateApproval, GatePause
from rollout.steps.notify import Notify
from rollout.steps.ramp import FlagsRamp
from rollout.steps.schedule import CronSchedule

KINDS: dict[str, type[Step]] = {
    kind.kind: kind
    for kind in (DbBackup, DbMaintenance, DbMigrate, DbVerify, DbSeed, EdgeDeploy, EdgeSecrets,
                 CronSchedule, FlagsSet, FlagsRamp, GateApproval, GatePause, GateAnalysis, Notify,
                 CheckSmoke, CheckLoad)
}

__all__ = ["KINDS", "Background", "Step", "StepContext"]
