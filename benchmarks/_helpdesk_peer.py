"""django-helpdesk 2.6.1 as the peer of ``imap_ingest.py``: its own venv, a Django project in a
temp dir, and one ``manage.py get_email`` run timed with its peak memory.

- :func:`ensure_venv` makes (once; later runs reuse it) a venv with ``django-helpdesk==2.6.1``
  and what it pins (Django 5.2 and the rest, from pip's configured index), from the
  interpreter that runs the benchmark. It returns a precondition message instead when that
  cannot be done.
- :class:`HelpdeskProject` writes a settings module, ``urls.py`` and ``manage.py`` into a
  folder, migrates a SQLite database and creates one Queue that reads a Dovecot mailbox.
- :meth:`HelpdeskProject.get_email` runs ``manage.py get_email`` and returns how long it took,
  its peak resident memory (the kernel's ``ru_maxrss`` for that one process, read with
  ``os.wait4``; the same high-water mark as ``VmHWM`` in /proc) and how many tickets and
  follow-ups it made.

What django-helpdesk 2.6.1's ``get_email`` does with an IMAP queue (helpdesk/email.py,
``process_email`` → ``process_queue`` → ``imap_sync``): it connects with
``imaplib.IMAP4_SSL(host, port)`` when ``email_box_ssl`` is set (Python's default context for
imaplib: encrypted, the certificate not verified, so Dovecot's own CA needs no setup), tries
STARTTLS (refused on a TLS connection; it logs a warning and goes on), logs in, selects
``email_box_imap_folder``, ``SEARCH NOT DELETED``, then for each message one
``FETCH n (RFC822)``, parses it, makes a Ticket (or a FollowUp on an existing one) and a
FollowUp, renders the submitter's notification from the EmailTemplate rows the migrations load,
and ``STORE n +FLAGS \\Deleted``; at the end one ``EXPUNGE``. Nothing is left in the mailbox.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PEER = "django-helpdesk"
PEER_VERSION = "2.6.1"
DEFAULT_VENV = Path.home() / ".cache" / "frontdesk-bench" / f"helpdesk-{PEER_VERSION}"

SETTINGS = '''\
"""Settings for the imap_ingest benchmark's django-helpdesk (written by the benchmark)."""

SECRET_KEY = "frontdesk-benchmark-not-a-secret"
DEBUG = False  # True would keep every SQL query in memory
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

# docs/install.rst: helpdesk with the django.contrib apps it needs, rest_framework for its API,
# django_cleanup. Not bootstrap4form (2.6.1 ships its own bootstrap5_form tags and does not
# depend on it) and not pinax-teams (an extra): teams mode is off below.
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.sites",
    "django.contrib.humanize",
    "rest_framework",
    "django_cleanup.apps.CleanupConfig",
    "helpdesk",
]
HELPDESK_TEAMS_MODE_ENABLED = False
SITE_ID = 1

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "urls"  # the ticket links in its notifications are reversed from these
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": %(db)r}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "/static/"
MEDIA_ROOT = %(media)r
LOGIN_URL = "helpdesk:login"

# get_email renders the submitter's notification for every ticket; nothing is delivered.
EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
DEFAULT_FROM_EMAIL = "support@example.com"
'''

URLS = '''\
from django.urls import include, path

urlpatterns = [path("helpdesk/", include("helpdesk.urls", namespace="helpdesk"))]
'''

MANAGE = '''\
import os
import sys

from django.core.management import execute_from_command_line

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
execute_from_command_line(sys.argv)
'''

MAKE_QUEUE = '''\
from helpdesk.models import Queue

Queue.objects.create(
    title="Support", slug="support", email_address="support@example.com",
    allow_email_submission=True, email_box_type="imap", email_box_host="127.0.0.1",
    email_box_port={port}, email_box_ssl=True, email_box_user={user!r},
    email_box_pass={password!r}, email_box_imap_folder="INBOX", email_box_interval=0,
    logging_type="none",
)
'''


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def installed_version(venv: Path) -> str | None:
    """The django-helpdesk version in the venv, None if there is none (or no venv)."""
    if not _python(venv).exists():
        return None
    result = subprocess.run(
        [str(_python(venv)), "-c",
         f"import importlib.metadata as m, django; print(m.version({PEER!r}))"],
        capture_output=True, text=True, timeout=60)
    return result.stdout.strip() if result.returncode == 0 else None


def ensure_venv(venv: Path) -> str | None:
    """Make ``venv`` hold django-helpdesk 2.6.1 (created once, reused after); None when it does,
    otherwise the precondition message saying why not."""
    if installed_version(venv) == PEER_VERSION:
        return None
    print(f"installing {PEER}=={PEER_VERSION} into {venv} (once) ...", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
             [str(_python(venv)), "-m", "pip", "install", "--quiet",
              f"{PEER}=={PEER_VERSION}"]]
    for step in steps:
        try:
            result = subprocess.run(step, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"cannot install {PEER} {PEER_VERSION} into {venv}: {exc}"
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
            return (f"cannot install {PEER} {PEER_VERSION} into {venv} "
                    f"(`{' '.join(step)}` exited {result.returncode}):\n{tail}")
    found = installed_version(venv)
    if found != PEER_VERSION:
        return f"{venv} holds {PEER} {found or 'nothing importable'}, not {PEER_VERSION}"
    return None


@dataclass
class PeerRun:
    seconds: float
    peak_mb: float
    exit_code: int
    tickets: int
    followups: int


class HelpdeskProject:
    """A Django project with django-helpdesk in ``folder``: SQLite database, one IMAP Queue."""

    def __init__(self, venv: Path, folder: Path) -> None:
        self.python = str(_python(venv))
        self.folder = folder
        self.db = folder / "helpdesk.sqlite3"
        self.log = folder / "get_email.log"
        folder.mkdir(parents=True)
        (folder / "settings.py").write_text(
            SETTINGS % {"db": str(self.db), "media": str(folder / "media")})
        (folder / "urls.py").write_text(URLS)
        (folder / "manage.py").write_text(MANAGE)

    def manage(self, *args: str) -> None:
        """``python manage.py ARGS`` in the project; its output goes to the log."""
        with self.log.open("ab") as out:
            result = subprocess.run([self.python, "manage.py", *args], cwd=self.folder,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, timeout=600)
        if result.returncode != 0:
            raise SystemExit(f"django-helpdesk: manage.py {args[0]} failed:\n"
                             + self.log.read_text(errors="replace")[-3000:])

    def setup(self, port: int, user: str, password: str) -> None:
        """Migrate the database and create the Queue reading ``user``'s INBOX over TLS."""
        self.manage("migrate", "--no-input", "-v", "0")
        self.manage("shell", "-c", MAKE_QUEUE.format(port=port, user=user, password=password))

    def get_email(self) -> PeerRun:
        """One ``manage.py get_email``, timed from its start to its exit."""
        with self.log.open("ab") as out:
            started = time.perf_counter()
            process = subprocess.Popen([self.python, "manage.py", "get_email"],
                                       cwd=self.folder, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT)
            _pid, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        return PeerRun(seconds=seconds, peak_mb=usage.ru_maxrss / 1024,
                       exit_code=process.returncode,
                       tickets=self.count("helpdesk_ticket"),
                       followups=self.count("helpdesk_followup"))

    def count(self, table: str) -> int:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        finally:
            conn.close()
