"""Collect one edge function's deployable files from the repository's `functions/` tree.

What is uploaded mirrors the Supabase CLI's API deploy (`pkg/function/deploy.go` `writeForm`):
the entrypoint and every local module it reaches through relative imports (so the
`functions/_shared/*.ts` a function imports travel with it), plus the import map and the
`deno.lock` beside it (the CLI leaves the lock out; we send it so that what the release
fingerprint counts is exactly what is uploaded, and the npm versions it pins travel along).
The local stack deploys the same files, so local and hosted run the same bundle. We also take
every other source file of the function's own directory, so a module loaded dynamically is not
lost. Paths are relative to the repository root, POSIX style (`functions/<name>/index.ts`), as
the CLI sends paths relative to the project directory.

Left out on purpose: Deno tests (`*_test.ts`, `*.test.ts`, …), dot-files (`.env` must never be
uploaded) and anything outside the repository. The result is deterministic (sorted paths) and
carries a SHA-256 for the journal.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Final

from rollout.adapters.supabase_api import FUNCTION_SLUG_RE, files_sha256
from rollout.errors import UsageError

FUNCTIONS_DIR: Final = "functions"
SHARED_DIR: Final = "_shared"
DEFAULT_ENTRYPOINT: Final = "index.ts"
IMPORT_MAP_NAMES: Final = ("deno.json",)
LOCK_NAME: Final = "deno.lock"
SOURCE_SUFFIXES: Final = frozenset({".ts", ".tsx", ".js", ".jsx", ".mjs", ".mts", ".json", ".wasm"})
_TEST_FILE_RE: Final = re.compile(r"(^|[._])test\.(ts|tsx|js|jsx|mjs|mts)$")

# The CLI's import scanner (`importPathPattern` in pkg/function/deno.go / upload.go):
# `import … from "x"`, `export … from "x"`, side-effect `import "x"` and dynamic `import("x")`.
_IMPORT_RE: Final = re.compile(
    r"""(?:import|export)\s+(?:\{[^{}]+\}|.*?)\s*(?:from)?\s*['"](.*?)['"]"""
    r"""|import\(\s*['"](.*?)['"]\s*\)""",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class FunctionBundle:
    """The files of one function as they will be uploaded, with what the deploy needs."""

    slug: str
    entrypoint_path: str
    verify_jwt: bool
    import_map_path: str | None = None
    files: Mapping[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def sha256(self) -> str:
        """Digest of every (path, content) pair, in path order: what the journal records."""
        return files_sha256(self.files)

    def manifest(self) -> dict[str, str]:
        """Path → SHA-256 of each file (JSON-ready; no contents)."""
        return {path: hashlib.sha256(self.files[path]).hexdigest() for path in self.files}


def collect_bundle(
    repo_root: Path,
    name: str,
    *,
    verify_jwt: bool = True,
    entrypoint: str = DEFAULT_ENTRYPOINT,
) -> FunctionBundle:
    """Collect `functions/<name>/**`, the local modules it imports and the import map."""
    if not FUNCTION_SLUG_RE.match(name):
        raise UsageError(f"invalid function name {name!r} (it becomes the URL slug)")
    root = repo_root.resolve()
    function_dir = root / FUNCTIONS_DIR / name
    entry = f"{FUNCTIONS_DIR}/{name}/{entrypoint}"
    if not (root / entry).is_file():
        raise UsageError(f"function {name}: entrypoint {entry} not found under {root}")
    import_map_path = _find_import_map(root, name)
    aliases = _import_map_aliases(root, import_map_path)
    files: dict[str, bytes] = {}
    own = sorted(_own_sources(root, function_dir))
    for path in [entry, *own]:
        _walk_imports(root, path, aliases, files)
    if import_map_path:
        files[import_map_path] = (root / import_map_path).read_bytes()
        # The lock beside the import map pins the npm modules: it ships with the bundle.
        lock = posixpath.join(posixpath.dirname(import_map_path), LOCK_NAME)
        if (root / lock).is_file():
            files[lock] = (root / lock).read_bytes()
    return FunctionBundle(
        slug=name,
        entrypoint_path=entry,
        verify_jwt=verify_jwt,
        import_map_path=import_map_path,
        files=dict(sorted(files.items())),
    )


def collect_bundles(repo_root: Path, names: Mapping[str, bool]) -> list[FunctionBundle]:
    """Bundles for several functions: name → verify_jwt; in name order."""
    return [collect_bundle(repo_root, name, verify_jwt=names[name]) for name in sorted(names)]


def _find_import_map(root: Path, name: str) -> str | None:
    """The function's own `deno.json`, else the repository's; None when there is none."""
    for candidate in (
        *(f"{FUNCTIONS_DIR}/{name}/{n}" for n in IMPORT_MAP_NAMES),
        *IMPORT_MAP_NAMES,
    ):
        if (root / candidate).is_file():
            return candidate
    return None


def _import_map_aliases(root: Path, import_map_path: str | None) -> dict[str, str]:
    """Import-map entries that point at local files (bare prefix → repo-relative path)."""
    if not import_map_path:
        return {}
    try:
        data = json.loads((root / import_map_path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"import map {import_map_path} is not valid JSON: {exc}") from None
    imports = data.get("imports", {}) if isinstance(data, dict) else {}
    base = posixpath.dirname(import_map_path)
    aliases: dict[str, str] = {}
    for key, target in imports.items():
        if isinstance(target, str) and target.startswith(("./", "../")):
            resolved = posixpath.normpath(posixpath.join(base, target))
            aliases[key] = resolved + "/" if target.endswith("/") else resolved
    return aliases


def _own_sources(root: Path, function_dir: Path) -> Iterator[str]:
    """Source files of the function's directory, minus tests and dot-files."""
    for path in function_dir.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and _is_deployable(rel):
            yield rel


def _is_deployable(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    if any(part.startswith(".") for part in parts):
        return False
    name = parts[-1]
    if _TEST_FILE_RE.search(name) or "tests" in parts[2:-1] or "test" in parts[2:-1]:
        return False
    return PurePosixPath(name).suffix in SOURCE_SUFFIXES


def _walk_imports(
    root: Path, start: str, aliases: Mapping[str, str], files: dict[str, bytes]
) -> None:
    """Add `start` and every local module it reaches (depth first, each file once)."""
    pending = [start]
    while pending:
        current = pending.pop()
        if current in files:
            continue
        path = root / current
        if not path.is_file():
            raise UsageError(f"{current} is imported but does not exist")
        content = path.read_bytes()
        files[current] = content
        for target in _local_imports(current, content, aliases):
            _check_inside(root, current, target)
            pending.append(target)


def _local_imports(current: str, content: bytes, aliases: Mapping[str, str]) -> Iterator[str]:
    """Repo-relative paths of the local modules a file imports (npm:, jsr:, URLs skipped)."""
    text = content.decode("utf-8", errors="replace")
    for match in _IMPORT_RE.finditer(text):
        spec = (match.group(1) or match.group(2) or "").strip()
        for key, target in aliases.items():
            if spec.startswith(key):
                spec = "./" + posixpath.relpath(
                    target + spec[len(key) :], posixpath.dirname(current) or "."
                )
                break
        if not spec.startswith(("./", "../")):
            continue
        if not posixpath.splitext(spec)[1]:
            continue
        yield posixpath.normpath(posixpath.join(posixpath.dirname(current), spec))


def _check_inside(root: Path, importer: str, target: str) -> None:
    if target.startswith("../") or target == ".." or posixpath.isabs(target):
        raise UsageError(f"{importer} imports {target}, outside the repository")
    if not target.startswith(f"{FUNCTIONS_DIR}/"):
        raise UsageError(f"{importer} imports {target}, outside {FUNCTIONS_DIR}/")
    if not (root / target).resolve().is_relative_to(root):
        raise UsageError(f"{importer} imports {target}, outside the repository")
