"""Run directories: checked before any work, and held by one process at a time.

Two commands writing one directory would each believe it finished while only the later one's
files survive, so `claim` takes an exclusive lock on OUT/.lock for as long as it writes.
The lock is advisory (flock) and goes with the process, so a killed run leaves none behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError

LOCK = ".lock"


def prepare(out: Path) -> Path:
    """Create `out` (and parents) or fail with one line when it cannot be a run directory."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory; --out names a run directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot create the run directory ({e.strerror})") from e
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"{out}: the run directory is not writable")
    return out


@contextlib.contextmanager
def claim(out: Path) -> Iterator[Path]:
    """Prepare `out` and hold it exclusively; a second claimant fails at once, naming the first."""
    created = not Path(out).exists()
    out = prepare(out)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    finished = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise InputError(
                f"{out}: in use by another backdoorlab process (pid {holder}); "
                "wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield out
        finished = True
    finally:
        if created and not finished and os.listdir(out) == [LOCK]:
            # A command that failed before writing anything leaves no empty directory behind.
            with contextlib.suppress(OSError):
                os.unlink(out / LOCK)
                os.rmdir(out)
        os.close(fd)  # closing releases the lock
