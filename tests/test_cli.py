"""The `serving` command's assembly: every area's commands are reachable, and starting the CLI
imports none of the heavy libraries until a command needs them."""

from __future__ import annotations

import importlib
import subprocess
import sys

from click.testing import CliRunner

from serving.cli import AREAS, main


def test_the_table_names_exactly_what_each_area_exports():
    for module, names in AREAS.items():
        exported = importlib.import_module(module).COMMANDS
        assert tuple(c.name for c in exported) == names, module


def test_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for names in AREAS.values():
        for name in names:
            assert f"  {name}" in result.output


def test_starting_the_cli_imports_no_heavy_library():
    heavy = ["sklearn", "mlserver", "kubernetes", "locust", "streamlit", "matplotlib", "numpy"]
    code = (
        "import sys, serving.cli; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_an_unknown_command_is_refused_with_the_list():
    result = CliRunner().invoke(main, ["nosuch"])
    assert result.exit_code == 2
    assert "No such command 'nosuch'" in result.output
