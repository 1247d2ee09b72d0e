"""One CLI convention for every command (issue #17), checked with typer's CliRunner.

- ``-v/--verbose``, ``-q/--quiet`` and ``--debug`` work before or after the command name;
- ``--help`` lists them for every command and shows no ``<bool>`` on plain flags;
- a status line reaches a terminal within a second, never with ``-q`` or off a terminal;
- renamed options keep their old names as hidden aliases.
"""

from __future__ import annotations

import logging
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from geomed_seg import cli
from geomed_seg.commands import console
from geomed_seg.errors import ReadError

cli._register()
RUNNER = CliRunner()
GLOBAL_FLAGS = ("--verbose", "-v", "--quiet", "-q", "--debug")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _invoke(*args: str):
    return RUNNER.invoke(cli.app, [str(a) for a in args], env={"COLUMNS": "200"})


def _commands() -> list[str]:
    import typer.main

    return list(typer.main.get_command(cli.app).commands)


def test_every_command_is_listed():
    names = _commands()
    for name in ("info", "convert", "segment", "evaluate", "model-card", "classical", "run",
                 "batch", "train", "sam", "maskrcnn", "import-model", "catalog", "demo"):  # fmt: skip
        assert name in names


@pytest.mark.parametrize("command", [None, *_commands()])
def test_help_lists_global_flags_and_no_bool(command):
    result = _invoke(*([command] if command else []), "--help")
    assert result.exit_code == 0, result.output
    text = ANSI.sub("", result.output)
    assert "<bool>" not in text
    for flag in GLOBAL_FLAGS:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (command, flag)


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_anywhere(tmp_path, landsat_path, where):
    args = ["convert", landsat_path, tmp_path / "scene.tif"]
    args = ["-q", *args] if where == "before" else [*args, "-q"]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "scene.tif").exists()
    assert result.output == ""
    loud = _invoke("convert", landsat_path, tmp_path / "again.tif")
    assert loud.exit_code == 0 and "wrote" in loud.output  # the test can fail: -q matters


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_anywhere_sets_info_logging(landsat_path, where):
    args = ["info", landsat_path]
    args = ["-v", *args] if where == "before" else [*args, "--verbose"]
    _invoke("info", landsat_path)
    assert logging.getLogger().level == logging.WARNING
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert logging.getLogger().level == logging.INFO


def test_debug_after_command_shows_the_exception(tmp_path):
    plain = cli.main(["info", str(tmp_path / "missing.tif")])
    assert plain == 2
    with pytest.raises(ReadError):  # --debug: the traceback instead of one line
        cli.main(["info", str(tmp_path / "missing.tif"), "--debug"])


@pytest.mark.parametrize("command", ["classical", "evaluate", "model-card", "sam", "info"])
def test_quiet_accepted_by_commands_that_rejected_it(command):
    result = _invoke(command, "-q", "--help")
    assert result.exit_code == 0, result.output


def test_status_line_on_terminal_only(tmp_path, landsat_path, monkeypatch):
    args = ["classical", "ndwi", landsat_path, "-o", tmp_path / "a.tif",
            "--band-names", "blue,green,red,nir,swir1,swir2"]  # fmt: skip
    off = _invoke(*args)  # CliRunner's stderr is not a terminal
    assert off.exit_code == 0, off.output
    assert "opening" not in off.stderr
    monkeypatch.setattr(console, "on_terminal", lambda: True)
    args[4] = tmp_path / "b.tif"
    on = _invoke(*args)
    assert on.exit_code == 0, on.output
    assert f"ndwi: opening {landsat_path}…" in on.stderr
    args[4] = tmp_path / "c.tif"
    quiet = _invoke(*args, "-q")
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == ""


def test_status_line_within_a_second_on_a_pty(tmp_path, landsat_path):
    """On a real terminal, ``segment`` says what it does before torch and the model load."""

    def first_output(args: list[str], needle: bytes, timeout: float = 60.0) -> float:
        master, slave = pty.openpty()
        env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "geomed_seg.cli", *args],
                                stdout=slave, stderr=slave, env=env)  # fmt: skip
        os.close(slave)
        seen = b""
        try:
            while needle not in seen and time.perf_counter() - t0 < timeout:
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    try:
                        seen += os.read(master, 4096)
                    except OSError:
                        break
            return time.perf_counter() - t0 if needle in seen else float("inf")
        finally:
            proc.kill()
            proc.wait()
            os.close(master)

    # python's own start-up plus the CLI's imports (`--version` loads nothing more)
    startup = first_output(["--version"], b"geomed-seg ")
    ckpt = Path(__file__).parents[1] / "checkpoints" / "water_unet"
    seen = first_output(
        ["segment", str(landsat_path), "-m", str(ckpt), "-o", str(tmp_path / "w.tif")],
        b"loading model",
    )
    assert seen < startup + 1.0, (seen, startup)


def test_sam_old_checkpoint_name_is_a_hidden_alias(tmp_path, landsat_path, capsys):
    help_text = ANSI.sub("", _invoke("sam", "--help").output)
    assert "--model" in help_text and "--checkpoint" not in help_text
    for flag in ("--model", "--checkpoint"):  # both reach the SAM loader (no folder: exit 2)
        code = cli.main(["sam", str(landsat_path), flag, str(tmp_path / "nosam"),
                         "-o", str(tmp_path / "m.tif"), "--point", "290000,9110000"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and "nosam" in err, err


def test_class_sizes_name_the_class():
    rows = [
        {"index": 0, "name": "land", "area_km2": 10.0},
        {"index": 1, "name": "water", "area_km2": 123.44},
        {"index": 2, "name": "ET", "volume_ml": 12.34},
        {"index": 3, "name": "x", "area_crs_units2": 5.0},
    ]
    assert console.class_sizes(rows) == ["water: 123.4 km²", "ET: 12.34 ml", "x: 5 CRS units²"]
