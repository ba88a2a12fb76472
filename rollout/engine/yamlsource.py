"""YAML with positions: every value keeps the line and column it came from.

Pydantic reports an error as a path (`steps.3.with.schedule`); `Positions` turns that path
back into `plans/x.yaml:41:17` so an error names the place to fix. `${VAR}` and
`${VAR:-default}` are interpolated from the environment here, once, with the same positions;
values tagged `!secret` or taken from variables named like credentials are collected so the
masker can hide them everywhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rollout.errors import PlanError

MAX_PLAN_BYTES = 1024 * 1024
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|WEBHOOK|CREDENTIAL|DSN)", re.I)
URL_WITH_CREDENTIALS = re.compile(r"^[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I)


@dataclass
class Source:
    """A parsed plan file: plain data, where each path came from, and its secret values."""

    path: Path
    data: Any
    positions: dict[tuple[str | int, ...], tuple[int, int]] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)
    variables: set[str] = field(default_factory=set)
    missing: dict[str, list[tuple[str | int, ...]]] = field(default_factory=dict)
    """Variables used but not set, with where each is used: all reported at once."""

    def where(self, loc: tuple[str | int, ...]) -> str:
        """`file:line:col` of the deepest known prefix of `loc`."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.positions:
                line, col = self.positions[loc[:end]]
                return f"{self.path}:{line}:{col}"
        return str(self.path)


class _SecretLoader(yaml.SafeLoader):
    """SafeLoader that knows the `!secret` tag (the value is masked in every output)."""


def _secret(loader: yaml.SafeLoader, node: yaml.Node) -> yaml.Node:
    return node


_SecretLoader.add_constructor("!secret", _secret)


# What an unset variable reads as where the command does not need it (see `load`): values that
# pass the target's validation, and are never used.
PLACEHOLDERS: dict[tuple[str | int, ...], str] = {
    ("target", "project_ref"): "unsetunsetunsetunset",
    ("target", "supabase_url"): "https://unset.invalid",
}


def load(path: Path, environ: Mapping[str, str] | None = None,
         needs: Callable[[tuple[str | int, ...]], bool] | None = None) -> Source:
    """Parse and interpolate a plan file. With `needs`, a variable left unset where
    `needs(location)` is False does not fail the load (a command that only needs the database
    does not need the Management API token); it reads as a placeholder."""
    env = os.environ if environ is None else environ
    try:
        size = path.stat().st_size
    except OSError as err:
        raise PlanError(f"{path}: cannot read the plan ({err.strerror})") from err
    if size > MAX_PLAN_BYTES:
        raise PlanError(f"{path}: the plan is {size:,} bytes; plans are limited to "
                        f"{MAX_PLAN_BYTES:,} bytes")
    if path.is_dir():
        raise PlanError(f"{path}: is a directory, not a plan file")
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except OSError as err:
        raise PlanError(f"{path}: cannot read the plan ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise PlanError(f"{path}: not a text plan (byte {err.start} is not UTF-8): is it the "
                        "right file?") from err
    if "\x00" in text:
        raise PlanError(f"{path}: not a text plan (it contains NUL bytes): is it the right file?")
    try:
        node = yaml.compose(text, Loader=_SecretLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        context = ""
        if err.context and err.context_mark:
            start = err.context_mark
            context = f" ({err.context} at line {start.line + 1}, column {start.column + 1})"
        raise PlanError(f"{where}: invalid YAML: {err.problem}{context}") from err
    except yaml.YAMLError as err:
        raise PlanError(f"{path}: invalid YAML: {err}") from err
    if node is None:
        raise PlanError(f"{path}: the plan is empty")
    source = Source(path=path, data=None)
    source.data = _convert(node, (), source, env, secret=False)
    if needs is not None:
        for name, locs in list(source.missing.items()):
            if not any(needs(loc) for loc in locs):
                del source.missing[name]
                for loc in locs:
                    _set(source.data, loc, PLACEHOLDERS.get(loc, "unset"))
    if source.missing:
        raise missing_variables(source)
    if not isinstance(source.data, dict):
        raise PlanError(f"{source.where(())}: a plan is a mapping with `name`, `target` "
                        "and `steps`")
    return source


def _convert(node: yaml.Node, loc: tuple[str | int, ...], source: Source,
             env: Mapping[str, str], secret: bool) -> Any:
    source.positions[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    secret = secret or node.tag == "!secret"
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if not isinstance(key_node, yaml.ScalarNode):
                raise PlanError(f"{source.where(loc)}: mapping keys must be plain names")
            if key in result:
                line = key_node.start_mark.line + 1
                raise PlanError(f"{source.path}:{line}:{key_node.start_mark.column + 1}: "
                                f"duplicate key {key!r}")
            result[key] = _convert(value_node, (*loc, key), source, env, secret)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*loc, i), source, env, secret) for i, item in enumerate(node.value)]
    if node.tag == "!secret":
        return _interpolate(str(node.value), loc, source, env, secret=True)
    value = yaml.constructor.SafeConstructor().construct_object(node)
    if isinstance(value, str):
        return _interpolate(value, loc, source, env, secret)
    return value


def _set(data: Any, loc: tuple[str | int, ...], value: str) -> None:
    for key in loc[:-1]:
        data = data[key]
    data[loc[-1]] = value


def missing_variables(source: Source) -> PlanError:
    """One error naming every missing variable and where it is used. The hint offers a
    `${NAME:-default}` only for step parameters that are not secrets: a target's endpoints and
    credentials, and secrets, must come from the environment, never from a default in a plan."""
    names = sorted(source.missing)
    listed = ", ".join(f"{name} ({source.where(source.missing[name][0])})" for name in names)
    hint = "export " + " ".join(f"{name}=…" for name in names)
    defaultable = [n for n in names if all(loc[:1] == ("steps",) for loc in source.missing[n])
                   and not SECRET_NAME.search(n)]
    if defaultable and len(defaultable) == len(names):
        hint += f", or give a step parameter a default: ${{{defaultable[0]}:-value}}"
    return PlanError(f"{source.path}: {len(names)} environment variable(s) not set: {listed}",
                     hint=hint)


def _interpolate(value: str, loc: tuple[str | int, ...], source: Source,
                 env: Mapping[str, str], secret: bool) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        source.variables.add(name)
        if name in env and env[name] != "":
            found = env[name]
        elif default is not None:
            found = default
        else:
            source.missing.setdefault(name, []).append(loc)
            return ""
        if found and (secret or SECRET_NAME.search(name)):
            source.secrets.add(found)
        return found

    result = VARIABLE.sub(replace, value)
    if result and (secret or URL_WITH_CREDENTIALS.match(result)):
        source.secrets.add(result)
        password = URL_WITH_CREDENTIALS.match(result)
        if password:
            creds = result.split("://", 1)[1].split("@", 1)[0]
            source.secrets.add(creds.split(":", 1)[1])
    return result
