"""The README's command tables name commands and options the CLI has, and the documented
default port is the one the worker and the OpenAPI document use."""

from __future__ import annotations

import re
from pathlib import Path

import click
import yaml

from bastionary.cli.main import cli
from bastionary.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def documented_commands() -> list[str]:
    """Each `bastionary ...` snippet in the first cell of a table row."""
    snippets = []
    for line in README.splitlines():
        if line.startswith("| `bastionary "):
            first_cell = line.split(" | ")[0]
            snippets += re.findall(r"`(bastionary [^`]+)`", first_cell)
    return snippets


def resolve(words: list[str]) -> list[click.Command]:
    """The command(s) the words name: alternatives (`show|set`) give several."""
    group: click.Command = cli
    for word in words:
        if not isinstance(group, click.Group):
            break
        names = word.replace("\\", "").split("|")
        found = [group.commands[n] for n in names if n in group.commands]
        if not found:
            break
        if len(found) > 1:
            return found
        group = found[0]
    return [group]


def test_every_documented_command_and_option_exists():
    snippets = documented_commands()
    assert len(snippets) > 20
    for snippet in snippets:
        words = snippet.split()[1:]
        commands = resolve(words)
        assert all(command is not cli for command in commands), snippet
        options = {opt for command in commands for param in command.params for opt in param.opts}
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", snippet):
            assert option in options, (snippet, option)


def test_every_command_is_documented():
    documented = " ".join(documented_commands())
    for name, command in cli.commands.items():
        if isinstance(command, click.Group):
            for sub in command.commands:
                assert re.search(rf"bastionary {name} [^`]*{sub}", documented), f"{name} {sub}"
        else:
            assert f"bastionary {name}" in documented, name


def test_the_documented_default_port_is_the_worker_s_and_the_openapi_server_s():
    assert Settings().web_port == 6066
    assert "`BASTIONARY_WEB_PORT` (default 6066)" in README
    servers = yaml.safe_load((ROOT / "schemas" / "openapi.yaml").read_text())["servers"]
    assert [server["url"] for server in servers] == ["http://localhost:6066"]
