"""`delia --help` is the map of the tool: every command is reachable from it, each group
names its subcommands, and every line of the 'typical flow' names a real command."""
from __future__ import annotations

import re

import pytest

from delia_dist import cli


def test_help_lists_every_command_and_group_members(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    names = [m.NAME for m in cli._command_modules()]
    groups = {}
    for name in names:
        words = name.split()
        if len(words) > 1:
            groups.setdefault(words[0], []).append(words[1])
        else:
            assert re.search(rf"^\s+{name}\b", out, re.M), name
    for group, members in groups.items():
        listed = re.escape(" | ".join(sorted(members)))
        assert re.search(rf"^\s+{group}\s+{listed}$", out, re.M), (group, out)


def test_every_typical_flow_line_is_a_real_command():
    names = {m.NAME for m in cli._command_modules()}
    lines = [l.split("#")[0].strip() for l in cli.EPILOG.splitlines() if l.strip().startswith("delia ")]
    assert len(lines) >= 6
    for line in lines:
        words = line.split()[1:]
        assert " ".join(words[:2]) in names or words[0] in names, line


def test_group_without_subcommand_prints_its_help_and_exits_2(capsys):
    assert cli.main(["data"]) == 2
    assert "diversify" in capsys.readouterr().out
