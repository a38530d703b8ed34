"""``--help`` as a person reads it: paragraphs wrapped to the terminal, not at the source's line breaks,
and no bound that is the store's (a 64-bit row id) shown as if it were a choice."""

from __future__ import annotations

import inspect

import pytest
from typer.main import get_command

from connector.cli import app
from tests.cli._configs import invoke


def _commands() -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []

    def walk(command: object, path: str) -> None:
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, f"{path} {name}".strip())
        found.append((path, command))

    walk(get_command(app), "")
    return found


def test_no_help_paragraph_keeps_the_source_line_breaks() -> None:
    """Found by QA in `mvsync ui --help`: "... or MVSYNC_UI_USER and" / "MVSYNC_UI_PASSWORD ..." on two
    lines (typer keeps a docstring's line breaks after its first paragraph); store restore and upgrade too."""
    broken = {
        path: paragraph
        for path, command in _commands()
        for paragraph in inspect.cleandoc(getattr(command, "help", None) or "").split("\n\n")[1:]
        if "\n" in paragraph and not paragraph.startswith("\b")
    }
    assert broken == {}
    code, out, _ = invoke("ui", "--help")
    assert code == 0 and "or MVSYNC_UI_USER and MVSYNC_UI_PASSWORD (basic authentication)" in out


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("history", "list"), "--limit"),
        (("history", "show"), "run_id"),
        (("cs", "search"), "--limit"),
        (("mv", "search"), "--limit"),
    ],
)
def test_limits_show_their_lower_bound_only(args: tuple[str, ...], option: str) -> None:
    """Every --limit showed ``[1<=x<=9223372036854775807]``: the store's largest row id, still refused
    (tests/cli/test_bad_day.py), but no longer shown as the option's range."""
    code, out, _ = invoke(*args, "--help")
    [line] = [line for line in out.splitlines() if f" {option} " in line]
    assert code == 0 and "[x>=1]" in line and "9223372036854775807" not in out
