"""An exclusive lock on one file, held by one process at a time: dataset builds and training runs.

    lock = FileLock("<run>/.run.lock", what="pretrain ...")
    if not lock.try_acquire():          # never waits; lock.holder names who has it
        ...
    lock.problem()                      # '' while this process still holds it, else why not
    lock.release()

The file holds a JSON record naming its holder (pid, host, start time, what it does, a heartbeat
time and a random token). How exclusive the lock is depends on where the file is (`mode`):

* 'flock' (local disks): `fcntl.flock`. The kernel drops the lock when its holder exits, SIGKILL
  included, so a dead holder never blocks anyone; a record still in the file when the lock is taken
  is a dead holder's (`taken_over`: a clean release empties the file).
* 'exclusive' (a local filesystem without flock): the file is created with O_EXCL and removed on
  release. A record whose holder is dead is removed and the lock taken over: same host, its pid is
  gone; any host, its heartbeat is older than `stale_after` seconds.
* 'object' (gs://, s3://: object stores have neither flock nor exclusive create through epath):
  the record is written, then read back after `settle` seconds; a rival that wrote in between
  wins. Dead holders expire as in 'exclusive'. Two processes that both pass the read-back (one of
  them stalled for more than `settle` between its read and its write) both believe they hold it;
  `problem()` then tells the one whose record was overwritten at its next call.

A holder rewrites its heartbeat every `heartbeat_every` seconds from a daemon thread (in place under
flock; elsewhere the whole record is replaced, so that no reader sees half of one), and the path is
checked each time (`problem`): a lock file removed or replaced under a live holder (its folder
emptied, say) is a lost lock, whatever the mode.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from etils import epath

MODES = ("flock", "exclusive", "object")
# Seconds between two heartbeats of a holder (a rewrite of its record's `heartbeat` time).
HEARTBEAT_EVERY_S = 10.0
# A record whose heartbeat is older than this is a dead holder's, whatever host wrote it
# ('exclusive' and 'object' modes; flock needs no timeout). Long enough that a holder stalled by a
# slow filesystem keeps its lock, short enough that a requeued job does not wait long for a dead one.
STALE_AFTER_S = 120.0
# Seconds an 'object' lock waits between writing its record and reading it back.
SETTLE_S = 1.0
TIME_FORMAT = "%Y-%m-%d %H:%M:%S %Z"


def is_local(path: epath.PathLike) -> bool:
    """True for a path on this machine's filesystems (not gs://, s3://, ...)."""
    return "://" not in os.fspath(path)


def holder_record(what: str = "", token: str = "") -> dict[str, Any]:
    """This process as a lock holder: pid, host, start time (text), what it does, heartbeat (unix s)."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime(TIME_FORMAT),
              "heartbeat": time.time()}
    if what:
        record["what"] = what
    if token:
        record["token"] = token
    return record


def parse_record(text: str | bytes) -> dict[str, Any]:
    """A lock file's content -> its record ({} when empty or not a record)."""
    try:
        record = json.loads(text or "{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def describe_holder(holder: dict[str, Any], now: float | None = None) -> str:
    """'pid 12 on host (since ..., heartbeat 3 s ago): what' for messages; 'another process' when unknown."""
    if not holder:
        return "another process"
    text = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (since {holder.get('since', '?')}"
    if isinstance(holder.get("heartbeat"), (int, float)):
        age = max((time.time() if now is None else now) - holder["heartbeat"], 0.0)
        text += f", heartbeat {age:.0f} s ago"
    text += ")"
    if holder.get("what"):
        text += f": {holder['what']}"
    return text


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(holder: dict[str, Any], stale_after: float, now: float | None = None) -> bool:
    """A dead holder's record: same host and its pid gone, or a heartbeat older than `stale_after`.

    A record without a heartbeat (written by an older version) never expires by age.
    """
    if not holder:
        return True
    if holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", 0) or 0)):
        return True
    beat = holder.get("heartbeat")
    return isinstance(beat, (int, float)) and (time.time() if now is None else now) - beat > stale_after


class FileLock:
    """The lock file `path` (see the module docstring). Not reentrant; one holder per instance."""

    def __init__(self, path: epath.PathLike, *, what: str = "", mode: str | None = None,
                 stale_after: float = STALE_AFTER_S, heartbeat_every: float = HEARTBEAT_EVERY_S,
                 settle: float = SETTLE_S):
        """mode: one of MODES; default 'flock' for local paths (falling back to 'exclusive' where the
        filesystem refuses flock), 'object' for URLs. heartbeat_every: 0 -> no heartbeat thread."""
        self.path = epath.Path(path)
        self.mode = mode or ("flock" if is_local(path) else "object")
        if self.mode not in MODES:
            raise ValueError(f"lock mode {self.mode!r}; expected one of {MODES}")
        self.what, self.stale_after, self.heartbeat_every, self.settle = what, stale_after, heartbeat_every, settle
        self.token = uuid.uuid4().hex
        self.holder: dict[str, Any] = {}  # who holds it, after a failed try_acquire
        self.taken_over: dict[str, Any] = {}  # the dead holder's record this process replaced, if any
        self.held = False
        self._fd: int | None = None
        self._lost = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking and giving back ------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """Takes the lock if it is free or its holder is dead; never waits. False: `holder` has it."""
        if self.held:
            raise RuntimeError(f"{self.path}: already held by this lock object")
        self.holder, self.taken_over, self._lost = {}, {}, ""
        if self.mode != "object":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        acquired = {"flock": self._acquire_flock, "exclusive": self._acquire_exclusive,
                    "object": self._acquire_object}[self.mode]()
        if acquired:
            self.held = True
            if self.heartbeat_every > 0:
                self._stop.clear()
                self._thread = threading.Thread(target=self._beat, name=f"lock heartbeat {self.path}", daemon=True)
                self._thread.start()
        return acquired

    def release(self) -> None:
        """Gives the lock back (a no-op when not held); leaves alone a file another holder now owns."""
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None
        ours = not self.problem()
        self.held = False
        if self.mode == "flock":
            if ours:
                os.ftruncate(self._fd, 0)  # an empty file: the next holder knows this one ended cleanly
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.mode != "flock" and ours:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- while held ------------------------------------------------------------------------------
    def problem(self, fresh: bool = True) -> str:
        """'' while this process holds the lock; otherwise why it does not (one clause, for messages).

        Looks at the file: a stat on local disks, an object read on a bucket. With `fresh` False an
        'object' lock answers from the last look instead (its heartbeat looks every `heartbeat_every` s).
        """
        if not self.held:
            return f"this process does not hold {self.path}"
        if self._lost or (not fresh and self.mode == "object"):
            return self._lost
        if self.mode == "flock":
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return self._lose(f"the lock file {self.path} was removed")
            own = os.fstat(self._fd)
            if (st.st_ino, st.st_dev) != (own.st_ino, own.st_dev):
                return self._lose(f"the lock file {self.path} was replaced, now held by {describe_holder(self.read())}")
            return ""
        record = self.read()
        if record.get("token") != self.token:
            return self._lose(f"the lock file {self.path} now names {describe_holder(record)}"
                              if record else f"the lock file {self.path} was removed")
        return ""

    def heartbeat(self) -> bool:
        """Rewrites this holder's heartbeat time; False (and nothing written) once the lock is lost."""
        if self.problem():
            return False
        if self.mode == "flock":
            self._write_fd(self._record())  # in place: the flock is on this inode
        else:
            self._replace_record()
        return True

    def read(self) -> dict[str, Any]:
        """The record in the lock file now ({} when there is none)."""
        try:
            return parse_record(self.path.read_text())
        except (OSError, UnicodeDecodeError):
            return {}

    # -- internals -------------------------------------------------------------------------------
    def _lose(self, why: str) -> str:
        self._lost = why
        return why

    def _record(self) -> dict[str, Any]:
        return holder_record(self.what, self.token)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            try:
                if not self.heartbeat():
                    return
            except OSError:
                continue  # a transient filesystem error: try again at the next beat

    def _replace_record(self) -> None:
        """Writes this holder's record so that no reader ever sees half of it: a local file is written
        beside and renamed over the lock file; an object store replaces an object whole."""
        text = json.dumps(self._record(), sort_keys=True)
        if not is_local(self.path):
            self.path.write_text(text)
            return
        tmp = self.path.parent / f"{self.path.name}.{self.token}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.path)

    def _write_fd(self, record: dict[str, Any]) -> None:
        data = json.dumps(record, sort_keys=True).encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))
        os.fsync(self._fd)

    def _acquire_flock(self) -> bool:
        path = os.fspath(self.path)
        for _ in range(10):  # a file replaced between our open and our flock: open it again
            existed = os.path.exists(path)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    self.holder = self._read_settled()
                    return False
                if not existed:  # the empty file we just created would read as a holder writing its record
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                self.mode = "exclusive"  # a filesystem without flock
                return self._acquire_exclusive()
            try:
                same = os.path.samestat(os.stat(path), os.fstat(fd))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = parse_record(os.pread(fd, 1 << 16, 0))
            self.taken_over = previous if previous.get("pid") else {}
            self._fd = fd
            self._write_fd(self._record())
            return True
        raise OSError(f"{path}: the lock file keeps being replaced")

    def _read_settled(self) -> dict[str, Any]:
        """The holder's record; a holder writes it just after locking, so give it a moment."""
        for _ in range(10):
            record = self.read()
            if record:
                return record
            time.sleep(0.05)
        return {}

    def _acquire_exclusive(self) -> bool:
        previous = self.read()
        if self.path.exists():
            if previous and not is_stale(previous, self.stale_after):
                self.holder = previous
                return False
            if not previous and not self._empty_and_old():
                self.holder = self._read_settled()  # just created: its holder is writing it
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        try:
            fd = os.open(os.fspath(self.path), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            self.holder = self._read_settled()
            return False
        self._fd = fd
        self._write_fd(self._record())  # rivals reading it half-written see a new file: busy (`_empty_and_old`)
        os.close(fd)
        self._fd = None  # from now on the record is replaced whole (`_replace_record`)
        self.taken_over = previous if previous.get("pid") else {}
        if self.read().get("token") != self.token:  # removed by a rival taking over the same dead holder
            self.holder = self.read()
            return False
        return True

    def _empty_and_old(self) -> bool:
        try:
            return time.time() - os.stat(self.path).st_mtime > 2.0
        except FileNotFoundError:
            return True

    def _acquire_object(self) -> bool:
        previous = self.read()
        if previous and previous.get("token") != self.token and not is_stale(previous, self.stale_after):
            self.holder = previous
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._replace_record()
        time.sleep(self.settle)
        now = self.read()
        if now.get("token") != self.token:
            self.holder = now
            return False
        self.taken_over = previous if previous.get("pid") else {}
        return True
