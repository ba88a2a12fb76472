"""The README's command blocks, `--help` and the code agree: every command and option the README
shows exists in the Typer app, and every command and option of the app is in the README."""

from __future__ import annotations

import re
from typing import Any

import pytest
from typer.main import get_command

import rollout.cli.main  # noqa: F401  (registers the commands)
from rollout.cli.app import app
from tests.engine.conftest import ROOT

README = (ROOT / "README.md").read_text()
ROOT_COMMAND = get_command(app)
HIDDEN = {"--help", "--install-completion", "--show-completion"}


def leaves(group: Any, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every runnable command of the app by its full name (`flag set`), click objects."""
    found = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found |= leaves(command, (*prefix, name))
        else:
            found[" ".join((*prefix, name))] = command
    return found


COMMANDS = leaves(ROOT_COMMAND)


def options(command: Any) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts)
            if o.startswith("--")} - HIDDEN


def readme_lines() -> list[str]:
    """`rollout …` lines of the README's bash blocks; indented lines continue the one above."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for raw in block.splitlines():
            text = raw.split(" #")[0].rstrip().rstrip("\\")
            if text.startswith("rollout "):
                lines.append(text)
            elif text.startswith(" ") and lines and text.strip().startswith(("[", "--")):
                lines[-1] += " " + text.strip()
    return lines


def readme_uses() -> list[tuple[str, set[str]]]:
    """(command name, options shown) for every alternative of every README command line;
    `rollout local up [--with-functions] | down | status [--json] | env` is four commands."""
    uses = []
    for line in readme_lines():
        words = line.split()[1:]
        group, path = ROOT_COMMAND, []
        while words and hasattr(group, "commands") and words[0] in group.commands \
                and hasattr(group.commands[words[0]], "commands"):
            group = group.commands[words[0]]
            path.append(words.pop(0))
        for alternative in " ".join(words).split(" | ") if path else [" ".join(words)]:
            name = alternative.split(" ", 1)[0]
            command = (*path, name) if name in getattr(group, "commands", {}) else tuple(path)
            uses.append((" ".join(command), set(re.findall(r"--[a-z][a-z0-9-]*", alternative))))
    return uses


def test_every_readme_command_and_option_exists_in_the_app() -> None:
    uses = readme_uses()
    assert len(uses) > 20
    for name, shown in uses:
        if name == "":
            assert shown <= options(ROOT_COMMAND), shown
            continue
        assert name in COMMANDS, f"README shows `rollout {name}`, the app has no such command"
        assert shown <= options(COMMANDS[name]), (name, shown - options(COMMANDS[name]))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_and_option_of_the_app_is_in_the_readme(name: str) -> None:
    shown: dict[str, set[str]] = {}
    for used, opts in readme_uses():
        shown[used] = shown.get(used, set()) | opts
    assert name in shown, f"`rollout {name}` is missing from the README's command blocks"
    # Options may be explained in the prose around the block (`--plan`/`--env` once for all).
    missing = {o for o in options(COMMANDS[name]) if o not in shown[name] and o not in README}
    assert not missing, (name, missing)


def test_global_options_are_in_the_readme_and_in_help() -> None:
    for option in ("--version", "--debug"):
        assert option in options(ROOT_COMMAND) and option in README
