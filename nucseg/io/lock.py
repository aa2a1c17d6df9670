"""One job per output folder: `segment`, `segment-slide` and `data convert` hold an exclusive lock on theirs.

The lock is an OS file lock (flock) on `<folder>/.nucseg.lock`, so it dies with its process: a killed job leaves no
stale lock, and the next run takes it at once. The file names the holder (pid, start time, command), so a refused
job can say which one holds the folder. It is removed when the job ends. Where the OS or the filesystem has no
flock (Windows, some NFS or FUSE mounts), jobs are not locked.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".nucseg.lock"


class FolderLocked(OSError):
    """The output folder is held by another running nucseg job."""

    def __init__(self, folder: Path, holder: dict):
        self.folder, self.holder = Path(folder), holder
        pid = holder.get("pid", "?")
        started = holder.get("started", "an unknown time")
        command = holder.get("command", "")
        super().__init__(f"{folder}: in use by another nucseg job (pid {pid}, started {started}"
                         f"{': ' + command if command else ''}); wait for it to finish or choose another output folder")


def _holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return json.loads(os.read(fd, 65536).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold `folder` (created if missing) for this job; raises FolderLocked when another job holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock on this OS
        yield folder
        return
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderLocked(folder, holder) from None
        except OSError:  # a filesystem without flock (some NFS or FUSE mounts): the job runs unlocked
            os.close(fd)
            yield folder
            return
        # the holder before us may have removed the file after we opened it: then our lock is on a dead inode
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        info = {"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": command or " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(info).encode())
        yield folder
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still locked, so no one else can be holding this inode
        os.close(fd)
