"""Bring a project's edge-function secrets to the desired state, writing only what changed.

`GET /v1/projects/{ref}/secrets` returns, for each secret, its name and the hex SHA-256 of its
value (never the value). So a desired value is compared by digest and an unchanged secret is
not rewritten. When the API returns something that is not a SHA-256 hex digest (a format
change), the secret is treated as changed and written: correctness over saving one call.

The `SecretsChange` lists names only; no value is ever kept, printed or returned. Values cannot
be read back, so undoing a change needs the old values from elsewhere (the plan's own source).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Final

from rollout.adapters.supabase_api import ManagementAPI, secret_digest, validate_secret_names
from rollout.errors import UsageError

_SHA256_HEX: Final = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class SecretsChange:
    """What a sync did (or, from `plan_secrets`, would do): secret names only."""

    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether anything is (or was) written or removed."""
        return bool(self.created or self.updated or self.removed)

    def to_dict(self) -> dict[str, list[str]]:
        """JSON-ready, for the journal and `--json` output."""
        return {key: list(names) for key, names in asdict(self).items()}


def plan_secrets(
    api: ManagementAPI, desired: Mapping[str, str], unset: Iterable[str] = ()
) -> SecretsChange:
    """Compare `desired` (name → value) and `unset` with the project's secrets; change nothing."""
    unset = sorted(set(unset))
    _validate(desired, unset)
    current = api.list_secrets()
    created, updated, unchanged = [], [], []
    for name in sorted(desired):
        if name not in current:
            created.append(name)
        elif _same_value(current[name], desired[name]):
            unchanged.append(name)
        else:
            updated.append(name)
    removed = [name for name in unset if name in current]
    return SecretsChange(tuple(created), tuple(updated), tuple(unchanged), tuple(removed))


def sync_secrets(
    api: ManagementAPI, desired: Mapping[str, str], unset: Iterable[str] = ()
) -> SecretsChange:
    """Write the new and changed secrets in one call, then remove `unset` ones that exist."""
    change = plan_secrets(api, desired, unset)
    to_write = {name: desired[name] for name in (*change.created, *change.updated)}
    if to_write:
        api.set_secrets(to_write)
    if change.removed:
        api.unset_secrets(change.removed)
    return change


def _validate(desired: Mapping[str, str], unset: Iterable[str]) -> None:
    validate_secret_names([*desired, *unset])
    both = sorted(set(desired) & set(unset))
    if both:
        raise UsageError(f"secrets both set and unset: {', '.join(both)}")


def _same_value(reported: str, value: str) -> bool:
    """True only when the API reported a SHA-256 digest and it matches the value's."""
    digest = reported.strip().lower()
    return bool(_SHA256_HEX.match(digest)) and digest == secret_digest(value)
