"""Deploy a release's edge functions together, and put the previous ones back on rollback.

`deploy_all` keeps what was live before it changes anything (the currently deployed source of
each function, downloaded through the Management API and written under `previous_dir`), uploads
every function, switches them live together, then checks each one is ACTIVE at a newer version.
`rollback` redeploys each kept source, or deletes a function the release created.

The `DeployRecord` both return is plain JSON (`to_dict`/`from_dict`) so the engine can keep it
in its journal: it holds slugs, versions, paths and SHA-256 digests, never file contents and
never secrets. The kept sources live on disk under the caller's `previous_dir`; their digests
are checked before a rollback uses them.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rollout.adapters.function_bundle import FunctionBundle
from rollout.adapters.supabase_api import (
    EdgeFunction,
    FunctionSource,
    ManagementAPI,
    files_sha256,
)
from rollout.errors import TargetError


@dataclass
class PreviousFunction:
    """What was live for one slug before the deploy (`existed=False`: nothing was)."""

    slug: str
    existed: bool
    version: int | None = None
    entrypoint_path: str | None = None
    import_map_path: str | None = None
    verify_jwt: bool | None = None
    source_dir: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # relative path → sha256
    sha256: str | None = None


@dataclass
class DeployedFunction:
    """What the deploy switched live for one slug."""

    slug: str
    id: str
    version: int
    bundle_sha256: str


@dataclass
class DeployRecord:
    """Everything rollback needs; JSON-serialisable, free of secrets and file contents."""

    project_ref: str
    previous: list[PreviousFunction] = field(default_factory=list)
    deployed: list[DeployedFunction] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict for the journal."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeployRecord:
        """Rebuild a record read back from the journal."""
        return cls(
            project_ref=str(data["project_ref"]),
            previous=[PreviousFunction(**p) for p in data.get("previous", [])],
            deployed=[DeployedFunction(**d) for d in data.get("deployed", [])],
        )


@dataclass(frozen=True)
class RollbackReport:
    """Which functions rollback restored, deleted, or found already as they were."""

    restored: tuple[str, ...]
    deleted: tuple[str, ...]
    unchanged: tuple[str, ...]


class DeployError(TargetError):
    """The deploy failed part way; `record` says what was live before, for rollback."""

    def __init__(self, message: str, *, record: DeployRecord, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.record = record


def snapshot(api: ManagementAPI, slugs: Sequence[str], previous_dir: Path) -> DeployRecord:
    """Download the live source of each slug that exists and write it under `previous_dir`."""
    live = {f.slug: f for f in api.list_functions() if f.status != "REMOVED"}
    record = DeployRecord(project_ref=api.project_ref)
    for slug in sorted(slugs):
        source = api.download_function(slug) if slug in live else None
        if source is None:
            record.previous.append(PreviousFunction(slug=slug, existed=False))
            continue
        record.previous.append(_keep_source(source, previous_dir / slug))
    return record


def deploy_all(
    api: ManagementAPI,
    bundles: Sequence[FunctionBundle],
    previous_dir: Path,
    *,
    record: DeployRecord | None = None,
) -> DeployRecord:
    """Keep the previous sources, upload all bundles, switch them live together, verify.

    Pass the `record` from an earlier `snapshot` when the engine journals it before uploading;
    otherwise one is taken here. Any failure raises `DeployError` carrying the record.
    """
    if not bundles:
        return record or DeployRecord(project_ref=api.project_ref)
    slugs = [b.slug for b in bundles]
    if record is None:
        record = snapshot(api, slugs, previous_dir)
    else:
        kept = {p.slug for p in record.previous}
        missing = [s for s in slugs if s not in kept]
        if missing:  # never upload a function whose previous state is not kept
            record.previous.extend(snapshot(api, missing, previous_dir).previous)
    before = {p.slug: p.version for p in record.previous}
    try:
        live = _upload_and_activate(api, bundles)
        _verify_deployed(api, bundles, before)
    except TargetError as exc:
        raise DeployError(str(exc), record=record, hint=exc.hint) from exc
    by_slug = {f.slug: f for f in live}
    record.deployed = [
        DeployedFunction(
            slug=b.slug,
            id=by_slug[b.slug].id if b.slug in by_slug else "",
            version=by_slug[b.slug].version if b.slug in by_slug else 0,
            bundle_sha256=b.sha256,
        )
        for b in bundles
    ]
    return record


def rollback(api: ManagementAPI, record: DeployRecord) -> RollbackReport:
    """Put back what `record` says was live: redeploy kept sources, delete new functions.

    Idempotent (a resumed rollback skips what is already back). Every function is attempted;
    failures are reported together at the end.
    """
    live = {f.slug: f for f in api.list_functions() if f.status != "REMOVED"}
    failures: list[str] = []
    to_restore: list[tuple[PreviousFunction, FunctionSource]] = []
    to_delete: list[str] = []
    unchanged: list[str] = []
    for prev in record.previous:
        current = live.get(prev.slug)
        if not prev.existed:
            (to_delete if current else unchanged).append(prev.slug)
        elif current is not None and _already_back(api, prev, current):
            unchanged.append(prev.slug)
        else:
            try:
                to_restore.append((prev, _load_source(prev)))
            except TargetError as exc:
                failures.append(str(exc))
    restored = _restore(api, to_restore, failures)
    deleted = _delete(api, to_delete, failures)
    failures.extend(_verify_rolled_back(api, restored, deleted))
    if failures:
        raise TargetError(f"edge function rollback incomplete: {'; '.join(failures)}")
    return RollbackReport(tuple(restored), tuple(deleted), tuple(unchanged))


# -- steps ---------------------------------------------------------------------------------


def _upload_and_activate(
    api: ManagementAPI, bundles: Sequence[FunctionBundle]
) -> list[EdgeFunction]:
    """One bundle: deploy directly. Several: bundle each, then one bulk update (as the CLI)."""
    if len(bundles) == 1:
        return [_deploy(api, bundles[0], bundle_only=False)]
    staged = [_deploy(api, b, bundle_only=True) for b in bundles]
    return api.activate_functions(staged)


def _deploy(api: ManagementAPI, bundle: FunctionBundle, *, bundle_only: bool) -> EdgeFunction:
    return api.deploy_function(
        bundle.slug,
        bundle.files,
        bundle.entrypoint_path,
        bundle.verify_jwt,
        bundle.import_map_path,
        bundle_only=bundle_only,
    )


def _verify_deployed(
    api: ManagementAPI, bundles: Sequence[FunctionBundle], before: Mapping[str, int | None]
) -> None:
    """Each function must be listed ACTIVE with a version above the one it had before."""
    listed = {f.slug: f for f in api.list_functions()}
    for bundle in bundles:
        function = listed.get(bundle.slug)
        previous = before.get(bundle.slug)
        if function is None:
            raise TargetError(f"edge function {bundle.slug} is not listed after deploy")
        if not function.is_active:
            raise TargetError(
                f"edge function {bundle.slug} is {function.status} after deploy, not ACTIVE"
            )
        if previous is not None and function.version <= previous:
            raise TargetError(
                f"edge function {bundle.slug} is still at version {function.version} "
                f"after deploy (was {previous})"
            )


def _restore(
    api: ManagementAPI,
    to_restore: Sequence[tuple[PreviousFunction, FunctionSource]],
    failures: list[str],
) -> list[str]:
    """Redeploy kept sources; several are bundled first and switched live together."""
    if not to_restore:
        return []
    bundle_only = len(to_restore) > 1
    staged: list[EdgeFunction] = []
    for prev, source in to_restore:
        try:
            staged.append(
                api.deploy_function(
                    source.slug,
                    source.files,
                    source.entrypoint_path,
                    source.verify_jwt,
                    source.import_map_path,
                    bundle_only=bundle_only,
                )
            )
        except TargetError as exc:
            failures.append(f"{prev.slug}: {exc}")
    if bundle_only and staged:
        try:
            api.activate_functions(staged)
        except TargetError as exc:
            failures.append(f"activating {', '.join(f.slug for f in staged)}: {exc}")
            return []
    return [f.slug for f in staged]


def _delete(api: ManagementAPI, slugs: Sequence[str], failures: list[str]) -> list[str]:
    deleted: list[str] = []
    for slug in slugs:
        try:
            api.delete_function(slug)
            deleted.append(slug)
        except TargetError as exc:
            failures.append(f"{slug}: {exc}")
    return deleted


def _verify_rolled_back(
    api: ManagementAPI, restored: Sequence[str], deleted: Sequence[str]
) -> list[str]:
    if not restored and not deleted:
        return []
    listed = {f.slug: f for f in api.list_functions() if f.status != "REMOVED"}
    problems = [f"{s} is not ACTIVE after restore" for s in restored if not _active(listed, s)]
    problems += [f"{s} still exists after delete" for s in deleted if s in listed]
    return problems


def _already_back(api: ManagementAPI, prev: PreviousFunction, current: EdgeFunction) -> bool:
    """Whether the live function is the kept one: same version, or same files and settings."""
    if current.version == prev.version:
        return True
    live = api.download_function(prev.slug)
    return (
        live is not None
        and live.sha256 == prev.sha256
        and live.entrypoint_path == prev.entrypoint_path
        and live.verify_jwt == prev.verify_jwt
    )


def _active(listed: Mapping[str, EdgeFunction], slug: str) -> bool:
    function = listed.get(slug)
    return function is not None and function.is_active


# -- kept sources on disk ------------------------------------------------------------------


def _keep_source(source: FunctionSource, directory: Path) -> PreviousFunction:
    """Write a downloaded source under `directory` and describe it (paths + digests)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    root = directory.resolve()
    digests: dict[str, str] = {}
    for rel, content in source.files.items():
        target = (root / rel).resolve()
        if not target.is_relative_to(root):
            raise TargetError(f"refusing to write {rel!r} outside {root}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        digests[rel] = hashlib.sha256(content).hexdigest()
    return PreviousFunction(
        slug=source.slug,
        existed=True,
        version=source.version,
        entrypoint_path=source.entrypoint_path,
        import_map_path=source.import_map_path,
        verify_jwt=source.verify_jwt,
        source_dir=str(root),
        files=dict(sorted(digests.items())),
        sha256=source.sha256,
    )


def _load_source(prev: PreviousFunction) -> FunctionSource:
    """Read a kept source back, refusing it if any file is missing or changed."""
    if not prev.source_dir or not prev.entrypoint_path:
        raise TargetError(f"{prev.slug}: no kept source to restore")
    root = Path(prev.source_dir)
    files: dict[str, bytes] = {}
    for rel, digest in prev.files.items():
        path = root / rel
        if not path.is_file():
            raise TargetError(f"{prev.slug}: kept source file {path} is missing")
        content = path.read_bytes()
        if hashlib.sha256(content).hexdigest() != digest:
            raise TargetError(f"{prev.slug}: kept source file {path} was modified")
        files[rel] = content
    if prev.sha256 and files_sha256(files) != prev.sha256:
        raise TargetError(f"{prev.slug}: kept source does not match its recorded digest")
    return FunctionSource(
        slug=prev.slug,
        entrypoint_path=prev.entrypoint_path,
        verify_jwt=True if prev.verify_jwt is None else prev.verify_jwt,
        version=prev.version or 0,
        import_map_path=prev.import_map_path,
        files=files,
    )
