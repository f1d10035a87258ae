"""A real Dovecot IMAP server on 127.0.0.1 for the tests (Debian's dovecot-imapd).

It runs stand-alone from a temp directory (its own config, base_dir, state and log; nothing read
from /etc/dovecot) with a plain listener that offers STARTTLS and an implicit-TLS listener, both
with a certificate from a trustme CA. Every test gets its own user and Maildir::

    server = Dovecot(tmp_path)      # or the session fixture ``dovecot`` in conftest.py
    server.start()
    box = server.add_user()
    box.deliver(raw_mail)           # straight into Maildir/new, as an MDA would
    server.stop()

Mail is written into the Maildir the way an MDA does it (``tmp/`` then a rename into ``new/``),
which is thousands of messages a second, so large backlogs are cheap to set up.
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import trustme

SKIP_REASON = ("Dovecot is not installed (Debian: apt-get install dovecot-imapd); "
               "the IMAP tests need a real server")

_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in _SBIN:
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    return None


def available() -> bool:
    return _which("dovecot") is not None and _which("doveadm") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mailbox:
    """One Dovecot user with a Maildir, and ways to put mail in and look at it."""

    server: Dovecot
    user: str
    password: str
    home: Path
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def maildir(self) -> Path:
        return self.home / "Maildir"

    def folder_dir(self, folder: str = "INBOX") -> Path:
        return self.maildir if folder == "INBOX" else self.maildir / f".{folder}"

    def make_folder(self, folder: str) -> None:
        for sub in ("cur", "new", "tmp"):
            path = self.folder_dir(folder) / sub
            path.mkdir(parents=True, exist_ok=True)
        self.server.chown_tree(self.home)

    def deliver(self, raw: bytes, folder: str = "INBOX") -> None:
        """Put one message into the folder's ``new/`` as an MDA would."""
        base = self.folder_dir(folder)
        name = f"{time.time():.6f}.{uuid.uuid4().hex}.{next(self._seq)}.test"
        tmp = base / "tmp" / name
        tmp.write_bytes(raw)
        self.server.chown(tmp)
        os.rename(tmp, base / "new" / name)

    def deliver_many(self, messages: list[bytes], folder: str = "INBOX") -> None:
        for raw in messages:
            self.deliver(raw, folder)

    def doveadm(self, command: str, *args: str) -> str:
        """``doveadm COMMAND -u USER ARGS...`` (COMMAND may be two words: "mailbox status")."""
        return self.server.doveadm(*command.split(), "-u", self.user, *args)

    def status(self, folder: str = "INBOX") -> dict[str, int]:
        """messages, unseen, uidvalidity, uidnext of a folder."""
        out = self.doveadm("mailbox status", "messages unseen uidvalidity uidnext", folder)
        return {k: int(v) for k, _, v in (item.partition("=") for item in out.split()) if v}

    def flags(self, folder: str = "INBOX") -> list[str]:
        """The flags of every message in the folder, in UID order."""
        out = self.doveadm("fetch", "flags", "mailbox", folder)
        return [line.partition(":")[2].strip() for line in out.splitlines()
                if line.startswith("flags:")]

    def delete_folder(self, folder: str) -> None:
        self.doveadm("mailbox delete", "-r", folder)

    def create_folder(self, folder: str) -> None:
        self.doveadm("mailbox create", folder)

    def kick(self) -> bool:
        """Drop every IMAP connection of this user, as an admin or a crash would; False if the
        user had none."""
        return self.server.doveadm("kick", self.user, ok=(0, 68)) != ""


class Dovecot:
    """A stand-alone Dovecot instance under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.imap_port = free_port()
        self.imaps_port = free_port()
        self.config = root / "dovecot.conf"
        self.passwd = root / "passwd.d"  # a file per user: one written now is seen at once
        self.log = root / "dovecot.log"
        self.base_dir = root / "run"
        self.instance_name = f"frontdesk-test-{os.getpid()}-{self.imap_port}"
        self._users = itertools.count(1)
        if os.geteuid() == 0:
            self.uid = self.gid = 5000
            internal, login, group = "dovecot", "dovenull", "dovecot"
        else:  # an unprivileged instance: everything runs as the current user
            self.uid, self.gid = os.getuid(), os.getgid()
            internal = login = pwd.getpwuid(self.uid).pw_name
            group = grp.getgrgid(self.gid).gr_name
        self._internal, self._login, self._group = internal, login, group
        # Without root nothing can chroot: the login and anvil processes run unconfined.
        self._unprivileged = "" if os.geteuid() == 0 else "service anvil {\n  chroot =\n}\n"
        ca = trustme.CA()
        self.ca_file = root / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.cert_file, self.key_file = root / "cert.pem", root / "key.pem"
        cert.private_key_pem.write_to_path(str(self.key_file))
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(self.cert_file), append=True)
        # A CA that signed nothing here: verification against it must fail.
        self.other_ca_file = root / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(self.other_ca_file))
        self._write_config()

    def _write_config(self) -> None:
        r = self.root
        self.base_dir.mkdir(parents=True, exist_ok=True)
        (r / "state").mkdir(exist_ok=True)
        self.passwd.mkdir(exist_ok=True)
        self.config.write_text(f"""
instance_name = {self.instance_name}
base_dir = {self.base_dir}
state_dir = {r}/state
log_path = {self.log}
info_log_path = {self.log}
protocols = imap
listen = 127.0.0.1
default_internal_user = {self._internal}
default_internal_group = {self._group}
default_login_user = {self._login}
first_valid_uid = {min(self.uid, 500)}
disable_plaintext_auth = no
auth_mechanisms = plain login
ssl = yes
ssl_cert = <{self.cert_file}
ssl_key = <{self.key_file}
mail_location = maildir:~/Maildir
mail_fsync = never
mail_max_userip_connections = 100
stats_writer_socket_path =
shutdown_clients = yes
passdb {{
  driver = passwd-file
  args = {self.passwd}/%u
}}
userdb {{
  driver = passwd-file
  args = {self.passwd}/%u
}}
{self._unprivileged}service imap-login {{
  {"chroot =" if self._unprivileged else ""}
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imaps_port}
    ssl = yes
  }}
}}
""")

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def pid_file(self) -> Path:
        return self.base_dir / "master.pid"

    def start(self) -> None:
        dovecot = _which("dovecot")
        assert dovecot, SKIP_REASON
        # The master daemonizes and keeps the descriptors it was started with: never a pipe.
        with open(self.root / "dovecot.out", "ab") as out:
            subprocess.run([dovecot, "-c", str(self.config)], stdin=subprocess.DEVNULL,
                           stdout=out, stderr=out, check=True, timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._accepting(self.imap_port) and self._accepting(self.imaps_port):
                return
            time.sleep(0.05)
        raise RuntimeError("Dovecot did not start:\n" + self.log_text())

    @staticmethod
    def _accepting(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
        # Serving processes can outlive the master for a while (an IMAP session in IDLE): end
        # this instance's own, found by its unique instance name, as a server restart does.
        for child in self._children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        while self._accepting(self.imap_port) or self._accepting(self.imaps_port):
            time.sleep(0.05)

    def _children(self) -> list[int]:
        prefix = f"dovecot-{self.instance_name}/".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(prefix):
                found.append(int(entry.name))
        return found

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # -- users and files -----------------------------------------------------------------------

    def chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.gid)

    def chown_tree(self, top: Path) -> None:
        if os.geteuid() != 0:
            return
        for folder, _dirs, files in os.walk(top):
            os.chown(folder, self.uid, self.gid)
            for name in files:
                os.chown(os.path.join(folder, name), self.uid, self.gid)

    def add_user(self, password: str | None = None, *, bare: bool = False) -> Mailbox:
        """A new user with an empty Maildir. ``bare``: after login Dovecot offers this user
        plain IMAP4rev1 only (no IDLE, MOVE or UIDPLUS), like a minimal server."""
        user = f"user{next(self._users)}"
        password = password or f"pw-{secrets.token_hex(8)}"
        extra = "userdb_imap_capability=IMAP4rev1" if bare else ""
        home = self.root / "home" / user
        for sub in ("cur", "new", "tmp"):
            (home / "Maildir" / sub).mkdir(parents=True, exist_ok=True)
        self.chown_tree(home)
        entry = self.passwd / user
        entry.write_text(f"{user}:{{PLAIN}}{password}:{self.uid}:{self.gid}::{home}::{extra}\n")
        entry.chmod(0o644)
        return Mailbox(self, user, password, home)

    def doveadm(self, *args: str, ok: tuple[int, ...] = (0,)) -> str:
        doveadm = _which("doveadm")
        assert doveadm, SKIP_REASON
        result = subprocess.run([doveadm, "-c", str(self.config), *args],
                                stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        if result.returncode not in ok:
            raise RuntimeError(f"doveadm {' '.join(args)} failed: "
                               + result.stderr.decode(errors="replace"))
        return result.stdout.decode(errors="replace") if result.returncode == 0 else ""
