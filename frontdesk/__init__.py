"""frontdesk: the import root.

The code lives in the top-level folders of the repository, in layer order ``config/``,
``storage/``, ``domain/``, ``channels/``, ``daemon/``; this package makes them importable as
``frontdesk.config``, ``frontdesk.storage``, ``frontdesk.domain``, ``frontdesk.channels`` and
``frontdesk.daemon`` through the symbolic links beside this file, so that Python, mypy and
import-linter all see one package graph from a plain checkout, installed or not.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("frontdesk")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0.0.0"
