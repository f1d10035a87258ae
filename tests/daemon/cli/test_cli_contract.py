"""The command line as scripts and operators use it (CONTRACT.md, "Command line, continued").

Usage errors exit 2 before anything runs; every ``--json`` is one JSON document on stdout; a reader
that stops reading (``| head``) is not an error; durations may be compound; relative paths in the
config are the config file's, not the caller's; commands that only read never create a store;
the environment's ``FRONTDESK_*`` keys are checked like the file's, and blamed by name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from frontdesk import __version__
from frontdesk.config.schema import parse_duration
from frontdesk.daemon.cli.main import _parser, main

FRONTDESK = str(Path(sys.executable).parent / "frontdesk")


def _config(folder: Path, extra: str = "") -> Path:
    """A starter-like config with relative paths, as `frontdesk init` writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "frontdesk.toml"
    path.write_text('[database]\nurl = "sqlite+aiosqlite:///./frontdesk.db"\n'
                    '[daemon]\ndata_dir = "./frontdesk-data"\n'
                    '[email]\ninbox_addresses = ["support@example.com"]\n' + extra)
    return path


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FRONTDESK, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, check=False)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"frontdesk {__version__}"


@pytest.mark.parametrize("argv", [
    ["conversations", "--limit", "0"],
    ["journal", "--limit", "-3"],
    ["search", "x", "--limit", "zero"],
    ["report", "--json", "--csv"],
    ["report", "--since", "yesterday"],
    ["bogus"],
])
def test_usage_errors_exit_2_before_anything_runs(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "-c", str(tmp_path / "absent.toml")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "see `frontdesk" in err and "Traceback" not in err


def test_durations_may_be_compound() -> None:
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2d4h") == timedelta(days=2, hours=4)
    assert parse_duration(" 1m 30s ") == timedelta(seconds=90)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("1h30")


def test_compound_durations_in_config_and_options(tmp_path: Path) -> None:
    config = _config(tmp_path, '[sla]\nfirst_response = "1h30m"\n')
    shown = _run("check", "-c", str(config), "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["settings"]["sla"]["first_response"] == "90m"
    assert _run("db", "upgrade", "-c", str(config), cwd=tmp_path).returncode == 0
    report = _run("report", "-c", str(config), "--since", "1d12h", "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "overall" in json.loads(report.stdout)


def test_check_json_and_show_are_one_document_each(tmp_path: Path) -> None:
    config = _config(tmp_path)
    as_json = _run("check", "-c", str(config), "--json", cwd=tmp_path)
    verdict = json.loads(as_json.stdout)  # the whole of stdout: one document
    assert verdict["ok"] is True and verdict["config"] == str(config)
    assert any(line.startswith("slack desk disabled") for line in verdict["disabled"])
    shown = _run("check", "-c", str(config), "--show", cwd=tmp_path)
    assert json.loads(shown.stdout)["email"]["inbox_addresses"] == ["support@example.com"]
    assert "OK" in shown.stderr
    broken = _config(tmp_path / "broken", "[emial]\nx = 1\n")
    bad = _run("check", "-c", str(broken), "--json", cwd=tmp_path)
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["problems"] == [{"key": "emial", "message": "unknown key"}]


def test_a_reader_that_stops_reading_is_not_an_error(tmp_path: Path) -> None:
    config = _config(tmp_path)
    proc = subprocess.Popen([FRONTDESK, "check", "-c", str(config), "--show"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head -0`: gone before frontdesk writes a byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "BrokenPipe" not in err and "Traceback" not in err


def test_relative_paths_are_the_config_files_not_the_callers(tmp_path: Path) -> None:
    config = _config(tmp_path / "etc")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert _run("db", "upgrade", "-c", str(config), cwd=elsewhere).returncode == 0
    assert (tmp_path / "etc" / "frontdesk.db").is_file()
    shown = json.loads(_run("check", "-c", str(config), "--json", cwd=elsewhere).stdout)
    assert shown["settings"]["daemon"]["data_dir"] == str(tmp_path / "etc" / "frontdesk-data")
    listed = _run("conversations", "-c", str(config), "--json", cwd=elsewhere)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    assert list(elsewhere.iterdir()) == []  # nothing created where the command ran


@pytest.mark.parametrize("argv", [
    ["conversations"], ["show", "FD-1"], ["report"], ["journal"], ["search", "order"],
    ["contact", "show", "ada@example.org"],
])
def test_commands_that_only_read_never_create_a_store(argv: list[str], tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = _run(*argv, "-c", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert f"no store at {tmp_path / 'frontdesk.db'}" in result.stderr
    assert not (tmp_path / "frontdesk.db").exists()


def test_a_typo_in_an_absolute_store_path_creates_no_folders(tmp_path: Path) -> None:
    missing = tmp_path / "var" / "lib" / "frontdsk"
    config = tmp_path / "frontdesk.toml"
    config.write_text(f'[database]\nurl = "sqlite+aiosqlite:///{missing}/frontdesk.db"\n')
    result = _run("db", "upgrade", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert f"the store's folder {missing} does not exist" in result.stderr
    assert not (tmp_path / "var").exists()


def test_environment_keys_are_checked_and_blamed_by_name(tmp_path: Path) -> None:
    config = _config(tmp_path)
    typo = _run("check", "-c", str(config), cwd=tmp_path,
                env={"FRONTDESK_SLAK__BOT_TOKEN": "xoxb-secret-1"})
    assert typo.returncode == 1
    assert "slak.bot_token: unknown key (from the environment: FRONTDESK_SLAK__BOT_TOKEN)" \
        in typo.stderr
    assert "xoxb-secret-1" not in typo.stderr
    bad = _run("check", "-c", str(config), cwd=tmp_path,
               env={"FRONTDESK_EMAIL__OUTBOUND__PORT": "twenty-five"})
    assert "email.outbound.port:" in bad.stderr
    assert "(from the environment: FRONTDESK_EMAIL__OUTBOUND__PORT)" in bad.stderr
    fine = _run("check", "-c", str(config), "--json", cwd=tmp_path,
                env={"FRONTDESK_SAVED_REPLIES__REFUND": "Refunded.", "FRONTDESK_CONFIG": "x"})
    assert fine.returncode == 0, fine.stderr
    assert json.loads(fine.stdout)["settings"]["saved_replies"] == {"refund": "Refunded."}


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = (),
              ) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command a person can run (``journal`` runs alone as well as ``journal retry``)."""
    children = [action for action in parser._actions
                if isinstance(action, argparse._SubParsersAction)]
    runnable = bool(words) and not any(action.required for action in children)
    found = [(words, parser)] if runnable else []
    for action in children:
        for name, child in action.choices.items():
            found += _commands(child, (*words, name))
    return found


def test_every_command_has_an_example_and_every_argument_says_what_it_is() -> None:
    commands = _commands(_parser())
    assert len(commands) > 15
    for words, parser in commands:
        assert parser.epilog and parser.epilog.startswith("example:"), words
        assert "frontdesk " + " ".join(words) in parser.epilog, words
        for action in parser._actions:
            if not action.option_strings and not isinstance(action,
                                                            argparse._SubParsersAction):
                assert action.help, (words, action.dest)


def test_init_for_a_service_writes_the_state_paths_and_leaves_the_store(tmp_path: Path) -> None:
    state = tmp_path / "var" / "lib" / "frontdesk"
    config = tmp_path / "etc" / "frontdesk.toml"
    made = _run("init", "-c", str(config), "--state-dir", str(state), "--no-store", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    assert not state.exists()  # the store is the service user's to make
    state.mkdir(parents=True)  # as systemd-tmpfiles and StateDirectory= make it
    settings = json.loads(_run("check", "-c", str(config), "--json", cwd=tmp_path).stdout)
    assert settings["settings"]["database"]["url"] == f"sqlite+aiosqlite:///{state}/frontdesk.db"
    assert settings["settings"]["daemon"]["data_dir"] == f"{state}/attachments"


def test_the_units_documentation_is_installed_with_the_package() -> None:
    import tomllib

    from tests.support.helpers import REPO_ROOT

    unit = (REPO_ROOT / "systemd" / "frontdesk.service").read_text()
    [line] = [x for x in unit.splitlines() if x.startswith("Documentation=")]
    installed = line.removeprefix("Documentation=file:///opt/frontdesk/.venv/")
    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folder, _, name = installed.rpartition("/")
    assert name in data["data-files"][folder]
    assert (REPO_ROOT / name).is_file()


async def test_people_read_times_in_the_desks_time_zone(
        tmp_path: Path, make_settings: Any, daemon_factory: Any, clock: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.helpers import eventually, mail, processed, send

    zone = {"timezone": "America/New_York", "business_hours": "always", "first_response": "1h"}
    d = await daemon_factory(make_settings(sla=zone), clock=clock)  # 2026-11-23 10:00 UTC
    await send(d.email.smtp.port, mail(msgid="<tz@example.org>"))
    await eventually(lambda: processed(d.store))
    config = tmp_path / "desk.toml"
    config.write_text(f'[database]\nurl = "{d.settings.database.url}"\n'
                      '[sla]\ntimezone = "America/New_York"\n')
    assert await asyncio.to_thread(main, ["conversations", "-c", str(config)]) == 0
    listed = capsys.readouterr().out
    assert "2026-11-23 05:00 EST" in listed  # 10:00 UTC
    assert await asyncio.to_thread(main, ["show", "FD-1", "-c", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "created 2026-11-23 05:00 EST, first response due 2026-11-23 06:00 EST" in shown
    assert await asyncio.to_thread(main, ["show", "FD-1", "--json", "-c", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["created_at"].startswith("2026-11-23T10:00:00")
