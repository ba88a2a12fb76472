"""Beyond one machine: the messaging load as k6-operator manifests (grafana/k6-operator ≥ v1.6.0).

`prepare` seeds the load users in the target (the same fixed ids as `rollout load`), mints
their tokens with an expiry long enough for the run, and writes beside each other:

    testrun.yaml    the `TestRun` — no secret, no local path: it can be committed
    configmap.yaml  the script and `users.json` (ids only), mounted by the operator at /test
    secret.yaml     the API URL and anon key, and the tokens (several Secrets: a Secret holds
                    at most 1 MiB, and 5,000 tokens are about 1.5 MB). Mode 0600, git-ignored.

How the operator runs it (read from its source, v1.6.0, `pkg/resources/jobs/`):

- The initializer pastes `spec.arguments` verbatim into an `sh -c` script
  (`k6 archive /test/messaging.js -e NAME="${NAME}"… -O … <arguments>`, then
  `k6 inspect --execution-requirements`), while the runners get `strings.Fields(arguments)` as
  argv with no shell. Quoting would fix the first and break the second (the quotes would reach
  k6), so `arguments` holds only shell-neutral words (`check_arguments`); the trend stats are in
  the script's options, not on the command line.
- Env values reach `k6 archive` as `"${NAME}"`, expanded by the shell, so secretKeyRef values
  and the JSON `THRESHOLDS` survive. v1.4–v1.5 pasted the literal value instead (empty for a
  secretKeyRef, broken by the JSON's quotes) and older versions passed no env to the
  initializer at all: the script cannot even open its users file there. Hence v1.6.0.
- The initializer inherits the runner's env and volumes (no `spec.initializer`), and the
  operator refuses `parallelism` above `k6 inspect`'s maxVUs ("number of instances > number
  of VUs", stage `error`): `check_parallelism` refuses it here first.
- No `cleanup: post`: the TestRun, its jobs and the runners' logs (each runner's end-of-test
  summary) stay until `kubectl delete testrun`.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from rollout.checks.k6 import (
    DEFAULT_THRESHOLDS,
    K6_VERSION,
    LoadCast,
    LoadParams,
    remove_load_users,
    seed_load_users,
)
from rollout.checks.smoke import mint_token
from rollout.errors import UsageError

OPERATOR_MIN_VERSION = "v1.6.0"
NAME = "rollout-messaging-load"
SCRIPT_DIR = "/test"  # the operator mounts the script's ConfigMap (every key) here
TOKENS_DIR = "/var/run/rollout-load"
OBJECT_LIMIT = 1024 * 1024  # a ConfigMap's or a Secret's data, at most (Kubernetes)
TOKENS_PER_SECRET = 2000  # ≈ 580 kB of tokens: well under OBJECT_LIMIT
ARGUMENTS = "--no-usage-report"
TESTRUN_FILE, CONFIGMAP_FILE, SECRET_FILE = "testrun.yaml", "configmap.yaml", "secret.yaml"
TOKEN_TTL_MARGIN = 600  # seconds beyond the script's longest run: time to apply and start

_SHELL_NEUTRAL = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def seed_params() -> LoadParams:
    """The seed's load (§4.3): 5,000 DM VUs and 500 broadcasts, p99 < 200 ms, errors < 0.5 %.

    5,000 distinct senders (one per VU) writing to 500 MVP dealers, 20 sends each; one show per
    broadcast, 100 attendees registered per show, spread over 50 organizers.
    """
    return LoadParams(attendees=5000, mvp_dealers=500, organizers=50, dm_vus=5000,
                      dm_iterations=20, broadcasts=500, broadcast_vus=50, attendees_per_show=100,
                      thresholds={k: list(v) for k, v in DEFAULT_THRESHOLDS.items()},
                      max_duration="10m", parallelism=10)


def seconds(duration: str) -> float:
    """A k6 duration ("90s", "10m", "1h30m", "250ms") in seconds."""
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration.strip():
        raise UsageError(f"{duration!r} is not a duration (e.g. 90s, 10m, 2h, 1h30m)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def run_bound(params: LoadParams) -> float:
    """The longest the script can run, in seconds: its scenarios run side by side."""
    grace = 30.0  # k6's default gracefulStop
    dm = seconds(params.dm_duration) + grace if params.dm_duration else \
        seconds(params.max_duration) + grace
    broadcast = seconds(params.max_duration) + grace if params.broadcasts else 0.0
    return max(dm, broadcast)


def script_vus(params: LoadParams) -> dict[str, int]:
    """The VUs of each scenario as messaging.js sizes them; k6 inspect's maxVUs is their sum."""
    vus = {}
    if params.dm_vus > 0 and params.attendees and params.mvp_dealers:
        vus["dm"] = params.dm_vus
    if params.broadcasts > 0:
        vus["broadcast"] = max(1, min(params.broadcast_vus, params.broadcasts))
    return vus


def check_parallelism(params: LoadParams) -> None:
    """Refuse what the operator would refuse: more runner pods than the script has VUs."""
    if params.parallelism < 1:
        raise UsageError("parallelism must be at least 1")
    vus = script_vus(params)
    total = sum(vus.values())
    if params.parallelism > total:
        detail = " + ".join(f"{n} {kind}" for kind, n in vus.items()) or "none"
        raise UsageError(
            f"parallelism {params.parallelism} is more than the script's {total} VUs "
            f"({detail}): the k6-operator refuses more runner pods than VUs "
            "(\"number of instances > number of VUs\", the TestRun goes to stage error)",
            hint=f"use --parallelism {max(total, 1)} or less, or size the load up")


def check_arguments(arguments: str) -> None:
    """`spec.arguments` must mean the same in the initializer's `sh -c` and the runners' argv."""
    for word in arguments.split():
        if not _SHELL_NEUTRAL.match(word):
            raise UsageError(
                f"k6 argument {word!r} is not shell-neutral: the k6-operator pastes "
                "`arguments` into an `sh -c` script for the initializer but splits it on "
                "spaces (no shell) for the runners, so quotes and ( ) $ ; & | < > * ? would "
                "break one or the other")


def check_name(name: str) -> None:
    # Jobs are named <name>-initializer, <name>-starter, <name>-<n>: 63 characters at most.
    if not _DNS_LABEL.match(name) or len(name) > 63 - len("-initializer"):
        raise UsageError(f"{name!r} is not a usable TestRun name (lowercase letters, digits "
                          f"and '-', at most {63 - len('-initializer')} characters)")


def token_secret_count(params: LoadParams) -> int:
    """How many token Secrets the load needs: one token per attendee and per organizer."""
    return max(1, math.ceil((params.attendees + params.organizers) / TOKENS_PER_SECRET))


def token_files(count: int) -> list[str]:
    return [f"{TOKENS_DIR}/tokens-{n}.json" for n in range(1, count + 1)]


# ---- manifests ----------------------------------------------------------------------------------


def _labels() -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "rollout", "app.kubernetes.io/component": "load"}


def testrun_manifest(params: LoadParams, *, name: str = NAME, script_file: str = "messaging.js",
                     image: str = f"grafana/k6:{K6_VERSION}") -> dict[str, Any]:
    """The TestRun: the script and users.json from the ConfigMap `name`, the API URL and anon
    key from the Secret `name`, the tokens from the Secrets `name`-tokens-N."""
    check_name(name)
    check_parallelism(params)
    check_arguments(ARGUMENTS)
    secrets = token_secret_count(params)
    env: list[dict[str, Any]] = [
        {"name": "API_URL", "valueFrom": {"secretKeyRef": {"name": name, "key": "api_url"}}},
        {"name": "ANON_KEY", "valueFrom": {"secretKeyRef": {"name": name, "key": "anon_key"}}},
        {"name": "USERS_FILE", "value": f"{SCRIPT_DIR}/users.json"},
        {"name": "TOKEN_FILES", "value": ",".join(token_files(secrets))},
    ]
    env += [{"name": k, "value": v} for k, v in params.script_env().items()]
    sources = [{"secret": {"name": f"{name}-tokens-{n}",
                           "items": [{"key": "tokens.json", "path": f"tokens-{n}.json"}]}}
               for n in range(1, secrets + 1)]
    return {
        "apiVersion": "k6.io/v1alpha1",
        "kind": "TestRun",
        "metadata": {"name": name, "labels": _labels()},
        "spec": {
            "parallelism": params.parallelism,
            "script": {"configMap": {"name": name, "file": script_file}},
            "arguments": ARGUMENTS,
            "runner": {
                "image": image,
                "env": env,
                "volumes": [{"name": "load-tokens", "projected": {"sources": sources}}],
                "volumeMounts": [{"name": "load-tokens", "mountPath": TOKENS_DIR,
                                  "readOnly": True}],
            },
        },
    }


def users_document(cast: LoadCast) -> dict[str, Any]:
    """users.json for the ConfigMap: ids only (the tokens are in the Secrets)."""
    return {
        "attendees": [{"id": u} for u in cast.attendees],
        "mvp_dealers": [{"id": u} for u in cast.mvp_dealers],
        "broadcasts": [{"show_id": s, "organizer_id": o} for s, o in cast.shows],
    }


def configmap_manifest(script: Path, users: dict[str, Any], *, name: str = NAME
                       ) -> dict[str, Any]:
    data = {script.name: script.read_text(), "users.json": _compact(users)}
    _check_size(f"ConfigMap {name}", data)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": _labels()}, "data": data}


def secret_manifests(api_url: str, anon_key: str, tokens: dict[str, str], expires_at: datetime,
                     secrets: int, *, name: str = NAME) -> list[dict[str, Any]]:
    """The Secret `name` (api_url, anon_key) and `secrets` Secrets `name`-tokens-N, each
    holding `tokens.json` ({user id: token}); base64 as Kubernetes stores them."""
    annotations = {"rollout/tokens-expire-at": f"{expires_at:%Y-%m-%dT%H:%M:%SZ}"}
    ids = sorted(tokens)
    per = max(1, math.ceil(len(ids) / secrets))
    documents = [_secret(name, {"api_url": api_url, "anon_key": anon_key}, annotations)]
    for n in range(secrets):
        chunk = {i: tokens[i] for i in ids[n * per:(n + 1) * per]}
        documents.append(_secret(f"{name}-tokens-{n + 1}", {"tokens.json": _compact(chunk)},
                                 annotations))
    return documents


def _secret(name: str, data: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    _check_size(f"Secret {name}", data)
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "labels": _labels(), "annotations": annotations},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _check_size(what: str, data: dict[str, str]) -> None:
    size = sum(len(k) + len(v.encode()) for k, v in data.items())
    if size > OBJECT_LIMIT:
        raise UsageError(f"{what} would hold {size:,} bytes: Kubernetes allows 1 MiB")


def header(params: LoadParams, *, name: str = NAME, plan: str = "<plan>") -> str:
    """The TestRun's comment header: what to apply, how to read results, how to clean up."""
    vus = " + ".join(f"{n} {kind}" for kind, n in script_vus(params).items())
    return (
        f"# k6-operator TestRun for the messaging load check (generated by rollout).\n"
        f"# Needs grafana/k6-operator {OPERATOR_MIN_VERSION} or later. {params.parallelism} "
        f"runner pod(s) share {vus} VUs.\n"
        f"# Users, tokens, ConfigMap and Secrets: rollout load {plan} --prepare-k6-operator DIR\n"
        "# Apply (server-side: the ConfigMap and token Secrets are too big for client-side "
        "apply):\n"
        f"#   kubectl apply --server-side -f {CONFIGMAP_FILE} -f {SECRET_FILE}\n"
        f"#   kubectl create -f {TESTRUN_FILE}\n"
        f"# Watch: kubectl get testrun {name} -w   (stage error: the initializer refused it,\n"
        f"#   kubectl logs job/{name}-initializer)\n"
        "# Verdict: the stage says finished even when thresholds are crossed; each runner judges\n"
        "#   the thresholds on its share (all met => met for the whole run) and a crossed one\n"
        "#   fails its job (k6 exit 99):\n"
        f"#   kubectl get jobs -l k6_cr={name},runner=true   (FAILED/COMPLETIONS per runner)\n"
        f"#   kubectl logs -l k6_cr={name},runner=true --tail=-1   (each runner's summary)\n"
        f"# Run again: kubectl delete testrun {name}, then create it again (tokens permitting).\n"
        f"# Afterwards: rollout load {plan} --remove-k6-operator-users;\n"
        f"#   kubectl delete testrun {name}; kubectl delete -f {SECRET_FILE} -f {CONFIGMAP_FILE}\n"
    )


def dump(documents: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, width=100)


def write_testrun(params: LoadParams, out_path: Path, *, name: str = NAME, plan: str = "<plan>"
                  ) -> Path:
    """Write only the TestRun (no users, no Secrets): `prepare` writes all three."""
    manifest = testrun_manifest(params, name=name)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(header(params, name=name, plan=plan) + dump([manifest]))
    return out_path


# ---- preparing a target -------------------------------------------------------------------------


@dataclass
class Prepared:
    directory: Path
    files: list[Path]
    expires_at: datetime
    start_before: datetime  # the latest start that still lets the run finish with valid tokens
    secrets: int
    users: dict[str, int] = field(default_factory=dict)


def check_token_ttl(params: LoadParams, token_ttl: int) -> None:
    needed = run_bound(params) + TOKEN_TTL_MARGIN
    if token_ttl < needed:
        raise UsageError(
            f"a token TTL of {token_ttl}s is shorter than the run needs: the script may run "
            f"{run_bound(params):.0f}s, plus {TOKEN_TTL_MARGIN}s to apply and start",
            hint=f"use --token-ttl {math.ceil(needed / 60)}m or more")


def prepare(api_url: str, anon_key: str, jwt_secret: str, db_url: str, params: LoadParams,
            script: Path, out_dir: Path, *, token_ttl: int, name: str = NAME,
            plan: str = "<plan>") -> Prepared:
    """Seed the load users in the target, mint their tokens, write the three manifests."""
    manifest = testrun_manifest(params, name=name, script_file=script.name)  # checks first
    check_token_ttl(params, token_ttl)
    if not script.exists():
        raise UsageError(f"the load script {script} is missing")
    cast = seed_load_users(db_url, params.attendees, params.mvp_dealers, params.organizers,
                           shows=params.broadcasts, attendees_per_show=params.attendees_per_show)
    now = datetime.now(UTC).replace(microsecond=0)
    expires_at = now + timedelta(seconds=token_ttl)
    senders = cast.attendees + sorted({o for _, o in cast.shows})
    tokens = {uid: mint_token(jwt_secret, uid, token_ttl) for uid in senders}
    secrets = token_secret_count(params)
    configmap = configmap_manifest(script, users_document(cast), name=name)
    secret_docs = secret_manifests(api_url, anon_key, tokens, expires_at, secrets, name=name)

    out_dir.mkdir(parents=True, exist_ok=True)
    testrun_path = out_dir / TESTRUN_FILE
    testrun_path.write_text(header(params, name=name, plan=plan) + dump([manifest]))
    configmap_path = out_dir / CONFIGMAP_FILE
    configmap_path.write_text("# The load script and its users (ids only), for the TestRun "
                              f"{name}.\n" + dump([configmap]))
    secret_path = out_dir / SECRET_FILE
    _write_private(secret_path, f"# SECRET: tokens valid until {expires_at:%Y-%m-%d %H:%M} UTC "
                                "and the anon key. Never commit this file.\n" + dump(secret_docs))
    ignore = out_dir / ".gitignore"
    if SECRET_FILE not in (ignore.read_text().split() if ignore.exists() else []):
        with ignore.open("a") as handle:
            handle.write(f"{SECRET_FILE}\n")
    return Prepared(
        directory=out_dir, files=[testrun_path, configmap_path, secret_path],
        expires_at=expires_at,
        start_before=expires_at - timedelta(seconds=math.ceil(run_bound(params))),
        secrets=len(secret_docs),
        users={"attendees": len(cast.attendees), "mvp_dealers": len(cast.mvp_dealers),
               "organizers": len(cast.organizers), "shows": len(cast.shows)})


def _write_private(path: Path, text: str) -> None:
    """A new 0600 file (an old one is replaced, never widened)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def remove(db_url: str) -> dict[str, int]:
    """Delete the load users and shows `prepare` seeded (and what they wrote)."""
    return remove_load_users(db_url)
