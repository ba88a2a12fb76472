"""Deploy a release's edge functions together, and put the previous ones back on rollback.

`deploy_all` keeps what was live before it changes anything (the currently deployed source of
each function, downloaded through the Management API and written under `previous_dir`), uploads
every function, switches them live together, then checks each one is ACTIVE and serving the
bundle the upload produced: its `ezbr_sha256` (the platform's bundle hash) must be the one the
deploy answered. Versions alone prove nothing: the bulk update keeps whatever version it is sent
("you will need to manually bump the version", OpenAPI `v1-bulk-update-functions`), so the bulk
update here bumps it past the live one itself. `rollback` redeploys each kept source, or deletes
a function the release created, and succeeds only when the live hash is the restored bundle's
(so never while the release's bundle is still serving).

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
    ezbr_sha256: str | None = None  # the platform's hash of the bundle that was serving


@dataclass
class DeployedFunction:
    """What the deploy switched live for one slug."""

    slug: str
    id: str
    version: int
    bundle_sha256: str
    ezbr_sha256: str | None = None  # the platform's hash of the bundle the release put live
    verify_jwt: bool = True


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
        kept = _keep_source(source, previous_dir / slug)
        kept.ezbr_sha256 = live[slug].ezbr_sha256
        record.previous.append(kept)
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
        live = _upload_and_activate(api, bundles, before)
        _verify_live(api, live, "deploy")
    except TargetError as exc:
        raise DeployError(str(exc), record=record, hint=exc.hint) from exc
    by_slug = {f.slug: f for f in live}
    record.deployed = [
        DeployedFunction(
            slug=b.slug,
            id=by_slug[b.slug].id,
            version=by_slug[b.slug].version,
            bundle_sha256=b.sha256,
            ezbr_sha256=by_slug[b.slug].ezbr_sha256,
            verify_jwt=b.verify_jwt,
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
    before = {p.slug: live[p.slug].version if p.slug in live else None for p, _ in to_restore}
    restored = _restore(api, to_restore, before, failures)
    deleted = _delete(api, to_delete, failures)
    if restored:
        try:
            _verify_live(api, restored, "rollback", release=record.deployed)
        except TargetError as exc:
            failures.append(str(exc))
    if deleted:
        listed = {f.slug for f in api.list_functions() if f.status != "REMOVED"}
        failures += [f"{s} still exists after delete" for s in deleted if s in listed]
    if failures:
        raise TargetError(f"edge function rollback incomplete: {'; '.join(failures)}")
    return RollbackReport(tuple(f.slug for f in restored), tuple(deleted), tuple(unchanged))


# -- steps ---------------------------------------------------------------------------------


def _upload_and_activate(
    api: ManagementAPI,
    uploads: Sequence[FunctionBundle | FunctionSource],
    before: Mapping[str, int | None],
) -> list[EdgeFunction]:
    """One function: deploy directly. Several: bundle each, then one bulk update (as the CLI),
    bumping each version past the live one (the bulk update keeps the version it is sent)."""
    if len(uploads) == 1:
        return [_deploy(api, uploads[0], bundle_only=False)]
    staged = [_bump(_deploy(api, u, bundle_only=True), before.get(u.slug)) for u in uploads]
    activated = {f.slug: f for f in api.activate_functions(staged)}
    # What to verify is the hash the upload produced, whatever the bulk answer echoes.
    return [
        activated[f.slug].model_copy(update={"ezbr_sha256": f.ezbr_sha256})
        if f.slug in activated
        else f
        for f in staged
    ]


def _bump(function: EdgeFunction, live_version: int | None) -> EdgeFunction:
    if live_version is None or function.version > live_version:
        return function
    return function.model_copy(update={"version": live_version + 1})


def _deploy(
    api: ManagementAPI, upload: FunctionBundle | FunctionSource, *, bundle_only: bool
) -> EdgeFunction:
    return api.deploy_function(
        upload.slug,
        upload.files,
        upload.entrypoint_path,
        upload.verify_jwt,
        upload.import_map_path,
        bundle_only=bundle_only,
    )


def _verify_live(
    api: ManagementAPI,
    expected: Sequence[EdgeFunction],
    what: str,
    *,
    release: Sequence[DeployedFunction] = (),
) -> None:
    """Each function must be listed ACTIVE, serving the bundle hash its upload produced, with
    the planned verify_jwt (after a rollback: the restored bundle, not the release's)."""
    listed = {f.slug: f for f in api.list_functions() if f.status != "REMOVED"}
    released = {d.slug: d.ezbr_sha256 for d in release}
    problems = []
    for want in expected:
        got = listed.get(want.slug)
        if got is None:
            problems.append(f"{want.slug} is not listed after {what}")
        elif not got.is_active:
            problems.append(f"{want.slug} is {got.status} after {what}, not ACTIVE")
        elif want.ezbr_sha256 is None or got.ezbr_sha256 != want.ezbr_sha256:
            new = released.get(want.slug)
            note = " (the release's bundle is still live)" if new == got.ezbr_sha256 else ""
            problems.append(
                f"{want.slug} serves bundle {_short(got.ezbr_sha256)} after {what}, not the "
                f"uploaded {_short(want.ezbr_sha256)}{note}"
            )
        elif want.verify_jwt is not None and got.verify_jwt != want.verify_jwt:
            problems.append(
                f"{want.slug} has verify_jwt={got.verify_jwt} after {what}, not {want.verify_jwt}"
            )
    if problems:
        raise TargetError(f"edge function {what} not verified: {'; '.join(problems)}")


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "(no hash)"


def _restore(
    api: ManagementAPI,
    to_restore: Sequence[tuple[PreviousFunction, FunctionSource]],
    before: Mapping[str, int | None],
    failures: list[str],
) -> list[EdgeFunction]:
    """Redeploy kept sources (several are bundled first and switched live together)."""
    if not to_restore:
        return []
    try:
        return _upload_and_activate(api, [source for _, source in to_restore], before)
    except TargetError as exc:
        failures.append(f"restoring {', '.join(p.slug for p, _ in to_restore)}: {exc}")
        return []


def _delete(api: ManagementAPI, slugs: Sequence[str], failures: list[str]) -> list[str]:
    deleted: list[str] = []
    for slug in slugs:
        try:
            api.delete_function(slug)
            deleted.append(slug)
        except TargetError as exc:
            failures.append(f"{slug}: {exc}")
    return deleted


def _already_back(api: ManagementAPI, prev: PreviousFunction, current: EdgeFunction) -> bool:
    """Whether the live function is the kept one: the same bundle hash, else the same files."""
    if current.verify_jwt is not None and current.verify_jwt != prev.verify_jwt:
        return False
    if prev.ezbr_sha256 and current.ezbr_sha256:
        return current.ezbr_sha256 == prev.ezbr_sha256
    live = api.download_function(prev.slug)
    return (
        live is not None
        and live.sha256 == prev.sha256
        and (live.entrypoint_path == prev.entrypoint_path)
    )


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
