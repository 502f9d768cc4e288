"""Checks on an output folder, made once before any work starts, for every command that writes one.

A command that will write `--out` calls `check_writable_out(path)` first, so that an unwritable
location or a path that is a file fails in one line before minutes of work, not after.
Not here: what goes into the folder, or whether an existing folder may be resumed (each command
decides that).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from huginn.errors import HuginnError


def check_writable_out(path: str | Path, what: str = "--out") -> Path:
    """`path` as a Path, after checking that it is (or can become) a writable directory.

    Nothing is created: the nearest existing ancestor is probed with a temporary file, which is
    removed again. Raises a one-line `HuginnError` naming the path and what to change.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise HuginnError(f"{what} {path} is a file, not a directory; choose a folder path")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise HuginnError(f"{what} {path} cannot be created: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise HuginnError(f"{what} {path} is not writable (no write permission on {probe}); choose another folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise HuginnError(f"{what} {path} is not writable ({err.strerror} in {probe}); choose another folder") from None
    return path
