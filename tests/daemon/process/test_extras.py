"""The channel SDKs are optional extras (frontdesk[twilio], [telegram], [slack], [imap]): a part
whose keys are set but whose SDK is not installed is disabled in one line naming its extra, and
the core never imports an SDK it does not run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tomllib
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import pytest

from frontdesk.daemon.process.app import Daemon, build_channels
from frontdesk.daemon.process.registry import Settings
from tests.support.helpers import REPO_ROOT

SDKS = {"twilio": "twilio", "telegram": "telegram", "slack": "slack_bolt", "imap": "aioimaplib"}
"""Each extra and the module its part looks for."""

CREDENTIALS: dict[str, Any] = {
    "http": {"public_url": "https://support.example.com"},
    "twilio": {"account_sid": "AC" + "0" * 32, "auth_token": "twilio-secret"},
    "telegram": {"bot_token": "123:telegram-secret"},
    "slack": {"bot_token": "xoxb-slack-secret", "signing_secret": "signing-secret",
              "channel_id": "C0TEST"},
    "email": {"imap": {"host": "127.0.0.1", "port": 9, "tls": False, "username": "support",
                       "password": "imap-secret"}},
}


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """As if the packages of these modules were not installed, for find_spec."""
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        if name.split(".")[0] in modules:
            return None
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("extra", sorted(SDKS))
def test_a_missing_sdk_disables_its_part_in_one_line_naming_the_extra(
    extra: str, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(**CREDENTIALS)
    running, _ = build_channels(settings)
    hide(monkeypatch, SDKS[extra])
    channels, disabled = build_channels(settings)
    assert [line for line in disabled if "pip install" in line] == [
        next(line for line in disabled if f"pip install 'frontdesk[{extra}]'" in line)]
    assert len(channels) == len(running) - (extra != "slack")  # the desk is not a channel
    assert not [line for line in disabled if "secret" in line]


def test_a_daemon_without_the_sdks_runs_email_alone(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch,
) -> None:
    hide(monkeypatch, *SDKS.values(), "slack_sdk")
    d = Daemon(make_settings(**CREDENTIALS))
    assert [c.name for c in d.channels] == ["email", "logged"] and d.desk is None
    assert sorted(line.split(":")[0] for line in d.disabled) == sorted([
        "imap mailbox disabled", "slack desk disabled", "telegram channel disabled",
        "twilio channel (sms, whatsapp, voice) disabled",
        "web channel (chat widget, contact form) disabled",
        "meta channel (messenger, instagram, whatsapp) disabled"])


# Run in a fresh interpreter: the SDKs cannot be imported at all (as in an install without the
# extras), and find_spec does not find them.
BLOCKED = '''
import importlib.abc, importlib.util, json, pkgutil, sys
BLOCKED = {"twilio", "telegram", "slack_bolt", "slack_sdk", "aioimaplib"}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.split(".")[0] in BLOCKED else real(name, package))
'''

IMPORT_ALL = BLOCKED + '''
import frontdesk
needs = {}
for module in pkgutil.walk_packages(frontdesk.__path__, "frontdesk."):
    if ".migrations" in module.name:
        continue
    try:
        importlib.import_module(module.name)
    except ModuleNotFoundError as exc:
        needs[module.name] = exc.name.split(".")[0]
print(json.dumps(needs))
'''

CLI = BLOCKED + '''
from frontdesk.daemon.cli.main import main
sys.exit(main(sys.argv[1:]))
'''


def test_the_core_imports_no_sdk() -> None:
    """Only the modules of a part that needs an SDK import it (each is imported when its part
    runs); everything else imports without any SDK installed."""
    result = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=120, check=True)
    needs: dict[str, str] = json.loads(result.stdout)
    parts = {"twilio": "frontdesk.channels.twilio.", "telegram": "frontdesk.channels.telegram.",
             "slack_sdk": "frontdesk.daemon.desk.", "slack_bolt": "frontdesk.daemon.desk."}
    assert needs, "the blocker blocked nothing"
    for module, sdk in needs.items():
        assert sdk in parts and module.startswith(parts[sdk]), (module, sdk)


def test_check_without_the_sdks_names_the_extras(tmp_path: Path) -> None:
    config = tmp_path / "frontdesk.toml"
    config.write_text(f"""
[database]
url = "sqlite+aiosqlite:///{tmp_path}/frontdesk.db"
[http]
public_url = "https://support.example.com"
[email]
inbox_addresses = ["support@example.com"]
[email.imap]
host = "imap.example.com"
username = "support"
[twilio]
account_sid = "AC{"0" * 32}"
[slack]
channel_id = "C0TEST"
""")
    env = {"PATH": "/usr/bin:/bin", "FRONTDESK_EMAIL__IMAP__PASSWORD": "imap-secret",
           "FRONTDESK_TWILIO__AUTH_TOKEN": "twilio-secret",
           "FRONTDESK_TELEGRAM__BOT_TOKEN": "123:telegram-secret",
           "FRONTDESK_SLACK__BOT_TOKEN": "xoxb-secret",
           "FRONTDESK_SLACK__SIGNING_SECRET": "signing-secret"}
    result = subprocess.run([sys.executable, "-c", CLI, "check", "-c", str(config)],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    for extra in SDKS:
        assert f"pip install 'frontdesk[{extra}]'" in result.stdout, result.stdout
    assert "secret" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_the_extras_are_declared() -> None:
    """Every extra carries packages; [all] is every SDK and [test] includes it; the license is
    an SPDX expression, which needs setuptools 77 (PEP 639)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert all(extras.values())
    assert extras["all"] == [f"frontdesk[{','.join(['twilio', 'telegram', 'slack', 'imap'])}]"]
    assert "frontdesk[all]" in extras["test"]
    core = " ".join(project["project"]["dependencies"]).lower()
    for sdk in ("twilio", "python-telegram-bot", "slack", "aioimaplib"):
        assert sdk not in core
    assert project["project"]["license"] == "MIT"
    assert project["build-system"]["requires"] == ["setuptools>=77"]
