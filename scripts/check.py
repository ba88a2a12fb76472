"""Every check the project has, in one command (`make test`), ending with `N passed, N failed`.

Stages: ruff, mypy, import-linter contracts, pytest, then the Deno tests (unit, and integration
against a throw-away local stack brought up by `rollout` itself). Test counts come from JUnit
XML written by pytest and Deno, so the last line counts every test that ran, in both runtimes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
# pytest-xdist workers: the tests mostly wait on servers and subprocesses, so on two cores
# three workers run the suite in 6 min 14 s against 13 min 44 s serially (2026-12-02).
TEST_WORKERS = os.environ.get("ROLLOUT_TEST_WORKERS", "3")
# The suite starts the CLI as a subprocess hundreds of times: let Python keep its bytecode
# (a shell may set PYTHONDONTWRITEBYTECODE), or every start recompiles every module.
BASE_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run(title: str, argv: list[str], env: dict[str, str] | None = None) -> bool:
    print(f"\n=== {title}: {' '.join(argv)}", flush=True)
    began = time.monotonic()
    code = subprocess.call(argv, cwd=ROOT, env={**BASE_ENV, **(env or {})})
    print(f"=== {title}: {'ok' if code == 0 else f'FAILED (exit {code})'} "
          f"in {time.monotonic() - began:.1f}s", flush=True)
    return code == 0


def junit_counts(path: Path) -> tuple[int, int]:
    """(passed, failed) from a JUnit XML file; errors count as failures, skips as neither."""
    if not path.exists():
        return 0, 0
    passed = failed = 0
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = {child.tag for child in case}
        if outcome & {"failure", "error"}:
            failed += 1
        elif "skipped" not in outcome:
            passed += 1
    return passed, failed


def deno_stack_env(state: Path) -> dict[str, str]:
    """Bring up a throw-away local stack with the messaging system applied; its test env."""
    env = {**BASE_ENV, "ROLLOUT_STATE_DIR": str(state)}
    subprocess.run([str(BIN / "rollout"), "apply", "plans/local.yaml", "--yes", "--to",
                    "deploy-functions"], cwd=ROOT, env=env, check=True)
    from rollout.adapters.local_stack.stack import LocalStack

    stack = LocalStack(state)
    return {
        "ROLLOUT_TEST_FUNCTIONS_URL": f"{stack.api_url}/functions/v1",
        "ROLLOUT_TEST_DB_URL": stack.db_url,
        "ROLLOUT_TEST_JWT_SECRET": stack.secret("jwt_secret"),
    }


def main() -> int:
    reports = Path(tempfile.mkdtemp(prefix="rollout-check-"))
    lintable = [d for d in ("rollout", "tests", "scripts", "bench") if (ROOT / d).exists()]
    ok = run("ruff", [str(BIN / "ruff"), "check", *lintable])
    ok &= run("mypy", [str(BIN / "mypy"), "rollout"])
    ok &= run("import contracts", [str(BIN / "lint-imports")])
    pytest_xml = reports / "pytest.xml"
    ok &= run("pytest", [str(BIN / "pytest"), "-q", "-p", "no:cacheprovider",
                         "-n", TEST_WORKERS, "--dist", "worksteal",
                         f"--junitxml={pytest_xml}", "tests"])
    deno_xml = reports / "deno.xml"
    state = Path(tempfile.mkdtemp(prefix="rollout-deno-stack-", dir="/var/tmp"))
    state.chmod(0o755)
    sys.path.insert(0, str(ROOT))
    try:
        try:
            env = deno_stack_env(state)
        except subprocess.CalledProcessError as error:
            print(f"could not bring up the stack for the Deno tests: {error}", flush=True)
            ok = False
            env = {}
        env["NO_COLOR"] = "1"
        ok &= run("deno test", [str(BIN / "deno"), "test", "--frozen", "--allow-net",
                                "--allow-env", "--allow-read", "--allow-run",
                                "--reporter=dot", f"--junit-path={deno_xml}", "functions/"], env)
    finally:
        subprocess.run([str(BIN / "rollout"), "local", "down"], cwd=ROOT,
                       env={**BASE_ENV, "ROLLOUT_STATE_DIR": str(state)}, check=False)
    (py_passed, py_failed), (deno_passed, deno_failed) = (junit_counts(pytest_xml),
                                                          junit_counts(deno_xml))
    passed, failed = py_passed + deno_passed, py_failed + deno_failed
    if not ok and failed == 0:
        print("a non-test check failed (see the stages above)")
    print(f"{passed} passed, {failed} failed")
    return 0 if ok and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
