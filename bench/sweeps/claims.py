"""Claims: several sweep drivers on one store (two terminals, or many nodes on shared storage such
as a Slurm array) split its cells between them instead of each running all of them.

A driver claims a cell just before running it by creating `claims/<key>.claim` with
O_CREAT | O_EXCL (atomic on local file systems and on NFS v3 and later: of several drivers, exactly
one creates it). The file holds who claimed it (host, boot id, pid, the process's start time, when)
and its modification time is the heartbeat: a thread of the claimant touches it every `period_s`
while the cell runs. The claimant deletes it once the cell's record is stored, or when it is
interrupted.

A claim is live while its heartbeat is younger than `stale_s` (default 10 x period_s); a claim of a
process on this machine (same host name and boot id) that no longer exists is dead at once (a
driver killed outright on this machine is not waited for). A driver that finds a dead claim
recovers it: it creates `<key>.claim.recover` with O_EXCL (so one recoverer at a time), checks again
that the claim is dead, deletes it and claims the cell as usual. A recover marker older than
stale_s (its recoverer died within that short step) is deleted.

What the protocol guarantees: no cell is computed twice while its claimant is alive and its
heartbeat keeps up. A claimant whose heartbeat stops for stale_s while it lives on (a stopped
process, a hung file server) may see its cell recovered and computed again; records are
deterministic and written atomically, so the store stays right, only work is lost. Heartbeats are
compared with this machine's clock: nodes sharing a store need clocks within stale_s of each other.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

HEARTBEAT_S = 10.0
STALE_FACTOR = 10  # a claim is dead once its heartbeat is this many periods old


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22), so a pid reused
    by a later process is not mistaken for the claimant; None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return start is None or _start_ticks(pid) in (None, start)


class Claims:
    """The claims of one driver in a store's claims/ folder; use as a context manager (it runs
    the heartbeat thread and releases every claim it still holds on exit, interrupted or not)."""

    def __init__(self, folder: str | Path, period_s: float = HEARTBEAT_S,
                 stale_s: float | None = None):
        self.folder = Path(folder)
        self.period_s = period_s
        self.stale_s = stale_s if stale_s is not None else STALE_FACTOR * period_s
        pid = os.getpid()
        self.me = {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": pid,
                   "start_ticks": _start_ticks(pid), "driver": uuid.uuid4().hex}
        self.held: dict[str, tuple[Path, int]] = {}  # key -> (claim file, its inode)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Claims:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="seqbench-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for key in list(self.held):
            self.release(key)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.claim"

    def acquire(self, key: str) -> bool:
        """Claim a cell; False where a live claimant holds it (True if this driver does)."""
        if key in self.held:
            return True
        path = self.path(key)
        for _ in range(3):  # a dead claim removed, or a live one released meanwhile: try again
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                if not self._recover(path):
                    return False
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me | {"key": key, "claimed": time.time()}, f)
            with self._lock:
                self.held[key] = (path, os.stat(path).st_ino)
            return True
        return False

    def release(self, key: str) -> None:
        """Give a cell up (its record is stored, or this driver stops); never another's claim."""
        with self._lock:
            path, inode = self.held.pop(key, (None, None))
        if path is not None and self._inode(path) == inode:
            path.unlink(missing_ok=True)

    def held_elsewhere(self, key: str) -> bool:
        """Whether another live claimant holds the cell now (a hint; acquire() decides)."""
        return key not in self.held and self.live(self.path(key)) is True

    def live(self, path: Path) -> bool | None:
        """True for a live claim, False for a dead one, None where there is none."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        try:
            who = json.loads(path.read_text())
        except (OSError, ValueError):
            who = {}  # being written (created a moment ago), or damaged: judged by its age
        if isinstance(who, dict) and (who.get("host"), who.get("boot_id")) == (
                self.me["host"], self.me["boot_id"]) and isinstance(who.get("pid"), int):
            if not _pid_alive(who["pid"], who.get("start_ticks")):
                return False
        return time.time() - st.st_mtime <= self.stale_s

    def _recover(self, path: Path) -> bool:
        """Delete path if its claim is dead (or report it gone): True if it may be claimed now."""
        state = self.live(path)
        if state is not False:
            return state is None
        marker = path.with_name(path.name + ".recover")
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:  # another driver is recovering it
            self._drop_stale_marker(marker)
            return False
        try:
            if self.live(path) is False:  # checked again, now alone
                path.unlink(missing_ok=True)
                return True
            return self.live(path) is None
        finally:
            marker.unlink(missing_ok=True)

    def _drop_stale_marker(self, marker: Path) -> None:
        try:
            if time.time() - marker.stat().st_mtime > self.stale_s:
                marker.unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    @staticmethod
    def _inode(path: Path) -> int | None:
        try:
            return os.stat(path).st_ino
        except FileNotFoundError:
            return None

    def _beat(self) -> None:
        while not self._stop.wait(self.period_s):
            with self._lock:
                held = list(self.held.values())
            for path, inode in held:
                if self._inode(path) == inode:  # else it was recovered from us: leave it
                    try:
                        os.utime(path)
                    except FileNotFoundError:
                        pass
