"""Run-directory state of the grid runner: what each stage did, kept on disk, read from disk only.

Status lives in files, never only in a live process: ``archobj status`` reads it from any process
(a login node while SLURM runs the stages), and a runner that dies leaves a state the next run
resumes. A grid directory holds one directory per stage version and a readable index::

    runs/tiny/
      index.md  index.json         the stage table, each replaced atomically (write_index)
      cd_flm -> cd_flm-1a2b3c4d    the current version of a name (point); older versions stay
      cd_flm-0f9e8d7c/             an older version, untouched
      cd_flm-1a2b3c4d/             one stage (the caller names and creates it)
        events.jsonl               append-only, one JSON object a line, e.g.
                                     {"event": "started", "time": "2024-05-01T12:00:00.000+00:00",
                                      "host": "gpu07", "pid": 4242, "attempt": 2}
        lock                       flock'ed by the runner executing the stage; holds
                                     {"host", "pid", "time"} while held, empty once released
        error.txt                  the full traceback of the newest failure (mark_failed)
        provenance.json            the caller's record (identity, upstream identities, ...), the
                                     code version, host, user, Python, start and end times
        config.json metrics.jsonl checkpoints/ eval/    the stage's own outputs (harness.train)

**Events**: ``submitted`` (``job_id``), ``started``, ``finished``, ``failed`` (``error``, one
line, and ``traceback_file``), ``interrupted``, ``cancelled``; each with ``time`` (ISO-8601 UTC),
``host``, ``pid`` and ``attempt`` (the newest ``started``'s number). Each is one ``os.write`` to a
file opened ``O_APPEND`` (writers take turns under a flock where there is one). A line cut short by
a crash is skipped on reading, and the next append starts a new line.

**States** (``stage_status``), from the newest event and the lock:

  pending      no directory, no events, or ``submitted`` (``job_id`` says which job) last
  running      a live process holds the lock
  done         a ``finished`` event last: recorded only once the stage's outputs are complete
  failed       a ``failed`` event last; rerun only when asked (--retry-failed)
  interrupted  ``started`` (or ``interrupted``/``cancelled`` after a start) last and no live
               holder: the runner is gone; the next run resumes from the newest checkpoint

``derive`` adds ``dep-failed`` from the DAG: a pending stage below a failed one.

**Locks.** The kernel releases an ``fcntl.flock`` when its holder dies, even by SIGKILL, so a
stage nobody holds has no runner. The holder's host and pid are recorded too, a second signal: a
held lock whose pid on this host is gone (a process the runner forked inherited it) reads
``interrupted``. On network file systems flock depends on the mount. NFS maps it onto POSIX locks,
shared between clients unless mounted ``local_lock=flock``/``all``, and dropped when the process
closes any descriptor of the file (so this module never opens a lock it holds). Lustre needs
``-o flock``: ``-o localflock`` locks per node, and without either flock fails (``StageLock`` says
so). With per-node locks another node sees a running stage as ``interrupted`` and could run it:
keep one runner per grid there, or use a mount with cluster-wide locks.

Standard library only, and the heavier modules imported only when writing: ``archobj status``
imports neither JAX nor TensorFlow (a test checks it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import pathlib
import socket
import sys
import time
from typing import Any, Mapping, Optional, Sequence, Union

EVENTS_FILE = "events.jsonl"
LOCK_FILE = "lock"
ERROR_FILE = "error.txt"
PROVENANCE_FILE = "provenance.json"
INDEX_MD, INDEX_JSON = "index.md", "index.json"
EVENTS = ("submitted", "started", "finished", "failed", "interrupted", "cancelled")
STATES = ("pending", "running", "done", "failed", "interrupted")
DEP_FAILED = "dep-failed"
INDEX_COLUMNS = ("stage", "status", "directory", "identity", "cells")
# provenance.json keys that this module fills; the caller's record may not use them.
PROVENANCE_OWN = ("environment", "attempt", "started", "finished")

PathArg = Union[str, "os.PathLike[str]"]
HOST = socket.gethostname()
_HELD: dict[str, StageLock] = {}   # real path of a stage directory -> the lock this process holds


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------------------- events

def append_event(stage_dir: PathArg, event: str, **fields: Any) -> dict[str, Any]:
    """Appends one event line to ``events.jsonl`` (creating the directory); returns the record."""
    if event not in EVENTS:
        raise ValueError(f"event={event!r}: not an event; use one of {', '.join(EVENTS)}")
    record: dict[str, Any] = {"event": event, "time": _now(), "host": HOST, "pid": os.getpid()}
    for key, value in fields.items():
        if key in record:
            raise ValueError(f"event field {key!r}: set by state.py itself; rename the field")
        record[key] = value
    directory = pathlib.Path(stage_dir)
    directory.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record) + "\n").encode()
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    fd = os.open(directory / EVENTS_FILE, flags, 0o644)
    try:
        with contextlib.suppress(OSError):   # writers take turns: a torn line means a crash
            fcntl.flock(fd, fcntl.LOCK_EX)    # released by the close below
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":   # a line torn by a crash: start a new one
            data = b"\n" + data
        written = os.write(fd, data)
        while written < len(data):   # a short write to a regular file: only on a full disk
            written += os.write(fd, data[written:])
    finally:
        os.close(fd)
    return record


def read_events(stage_dir: PathArg) -> list[dict[str, Any]]:
    """The events of a stage, oldest first; lines that do not parse (cut short) are skipped."""
    try:
        data = (pathlib.Path(stage_dir) / EVENTS_FILE).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return []
    events = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:   # also UnicodeDecodeError
            continue
        if isinstance(record, dict) and isinstance(record.get("event"), str):
            events.append(record)
    return events


def _attempts(stage_dir: PathArg) -> int:
    return sum(event["event"] == "started" for event in read_events(stage_dir))


def mark_submitted(stage_dir: PathArg, job_id: str) -> None:
    """Records that a scheduler job (SLURM) will run the stage's next attempt."""
    append_event(stage_dir, "submitted", job_id=str(job_id), attempt=_attempts(stage_dir) + 1)


def mark_started(stage_dir: PathArg, info: Optional[Mapping[str, Any]] = None) -> int:
    """Records the start of an attempt (call it holding ``StageLock``); returns its number.

    ``info`` adds keys to the event (for example the step it resumes from). ``provenance.json``
    gets ``attempt`` and ``started`` and loses ``finished``.
    """
    attempt = _attempts(stage_dir) + 1
    record = append_event(stage_dir, "started", attempt=attempt, **dict(info or {}))
    _update_provenance(stage_dir, attempt=attempt, started=record["time"], finished=None)
    return attempt


def mark_finished(stage_dir: PathArg) -> None:
    """Records that the stage is done: call it only once its outputs are complete."""
    record = append_event(stage_dir, "finished", attempt=_attempts(stage_dir))
    _update_provenance(stage_dir, finished=record["time"])


def mark_failed(stage_dir: PathArg, error: BaseException) -> str:
    """Writes ``error``'s traceback to ``error.txt`` and a ``failed`` event; returns its line."""
    import traceback
    directory = pathlib.Path(stage_dir)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / ERROR_FILE, "".join(traceback.format_exception(error)))
    message = " ".join(str(error).split())
    line = type(error).__name__ + (f": {message}" if message else "")
    line = line if len(line) <= 500 else line[:497] + "..."
    append_event(directory, "failed", error=line, traceback_file=ERROR_FILE,
                 attempt=_attempts(directory))
    return line


record_failure = mark_failed   # the name for it


# ------------------------------------------------------------------------------------------ lock

@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a stage's lock, as the lock file says (``None`` where it says nothing yet)."""

    host: Optional[str]
    pid: Optional[int]
    since: Optional[str]
    alive: Optional[bool]   # whether the pid runs: known on this host only


class StageBusy(RuntimeError):
    """Another process holds the stage's lock."""

    def __init__(self, stage_dir: PathArg, holder: Holder):
        self.stage_dir, self.holder = pathlib.Path(stage_dir), holder
        who = (f"host {holder.host}, pid {holder.pid}, since {holder.since}" if holder.host
               else "its holder has not written its name yet")
        if holder.alive is False:
            super().__init__(f"{stage_dir}: the stage's lock is held ({who}), but pid {holder.pid} "
                             "has exited: a process it started still holds the lock; stop that "
                             f"process (fuser -v {self.stage_dir / LOCK_FILE} names it)")
        else:
            super().__init__(f"{stage_dir}: another runner executes this stage ({who}); wait for "
                             "it to finish, or stop that process")


class StageLock:
    """The lock of one stage: ``with StageLock(stage_dir): ...`` runs it, or raises ``StageBusy``.

    ``wait_s``: how long a busy lock is retried (a status reader holds it for microseconds).
    """

    def __init__(self, stage_dir: PathArg, wait_s: float = 0.5):
        self.stage_dir = pathlib.Path(stage_dir)
        self.wait_s = wait_s
        self.holder: Optional[Holder] = None
        self._fd: Optional[int] = None
        self._key = ""

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> StageLock:
        if self._fd is not None:
            return self
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.stage_dir)
        if key in _HELD:   # on NFS a second descriptor in this process would not conflict
            raise StageBusy(self.stage_dir, _HELD[key].holder or Holder(None, None, None, None))
        path = self.stage_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _holder_from(os.pread(fd, 4096, 0))
                    os.close(fd)
                    raise StageBusy(self.stage_dir, holder) from None
                time.sleep(0.02)
            except OSError as e:
                os.close(fd)
                raise ValueError(
                    f"{path}: the file system refuses flock ({e.strerror}); mount it with locks "
                    "(Lustre: -o flock) or keep the runs directory on one that has them") from None
        self.holder = Holder(HOST, os.getpid(), _now(), True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({"host": HOST, "pid": os.getpid(), "time": self.holder.since})
                       + "\n").encode(), 0)
        self._fd, self._key = fd, key
        _HELD[key] = self
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD.pop(self._key, None)
        try:
            os.ftruncate(fd, 0)   # before unlocking: a reader never sees a stale name as held
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> StageLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def acquire(stage_dir: PathArg, wait_s: float = 0.5) -> Optional[StageLock]:
    """The stage's lock, held (``release()`` it), or None when another process holds it."""
    try:
        return StageLock(stage_dir, wait_s).acquire()
    except StageBusy:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    try:   # a killed process its parent has not reaped yet still answers kill(0)
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _holder_from(data: bytes) -> Holder:
    try:
        record = json.loads(data)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return Holder(None, None, None, None)
    host, pid = record.get("host"), record.get("pid")
    alive = _pid_alive(pid) if host == HOST and isinstance(pid, int) and pid > 0 else None
    return Holder(host, pid, record.get("time"), alive)


def lock_holder(stage_dir: PathArg) -> Optional[Holder]:
    """Who holds the stage's lock, or None when nobody does; reads only, creates nothing."""
    own = _HELD.get(os.path.realpath(stage_dir))
    if own is not None:
        return own.holder
    try:
        fd = os.open(pathlib.Path(stage_dir) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:   # no lock file (never run), or unreadable
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)   # released by the close below
            held: Optional[bool] = False
        except BlockingIOError:
            held = True
        except OSError:   # no flock on this mount: the recorded holder is all there is
            held = None
        data = os.pread(fd, 4096, 0) if held is not False else b""
    finally:
        os.close(fd)
    if held is False:
        return None
    holder = _holder_from(data)
    if held is None and (holder.host is None or holder.alive is False):
        return None
    return holder


# ---------------------------------------------------------------------------------------- status

@dataclasses.dataclass(frozen=True)
class StageStatus:
    """A stage's state and the facts a status table shows (times are ISO-8601 UTC strings)."""

    directory: pathlib.Path
    state: str                         # one of STATES
    attempts: int = 0                  # "started" events
    last_event: Optional[str] = None
    last_time: Optional[str] = None
    started: Optional[str] = None      # the newest attempt's start
    finished: Optional[str] = None     # when done
    duration_s: Optional[float] = None  # newest attempt: start to finished/failed, or to now
    host: Optional[str] = None         # running: the lock holder; else who wrote the last event
    pid: Optional[int] = None
    error: Optional[str] = None        # failed: the one-line error
    job_id: Optional[str] = None       # the newest "submitted" event's job


def _seconds(start: Optional[str], end: Optional[str]) -> Optional[float]:
    try:
        return (datetime.datetime.fromisoformat(end) - datetime.datetime.fromisoformat(start)
                ).total_seconds()
    except (TypeError, ValueError):
        return None


def stage_status(stage_dir: PathArg) -> StageStatus:
    """The state of one stage, from its ``events.jsonl`` and its lock only (a missing directory
    is pending); reads small files, writes nothing.

    A runner that starts or stops during the call can make it read ``interrupted`` for that
    moment: decide to resume a stage holding its ``StageLock``, after reading its status again.
    """
    directory = pathlib.Path(stage_dir)
    events = read_events(directory)
    holder = lock_holder(directory)
    starts = [event for event in events if event["event"] == "started"]
    last = events[-1] if events else {}
    kind = last.get("event")
    runner: Mapping[str, Any] = last
    end = last.get("time") if kind in ("finished", "failed") else None
    if kind == "finished":
        state = "done"
    elif kind == "failed":
        state = "failed"
    elif holder is not None and holder.alive is not False:
        state, runner, end = "running", {"host": holder.host, "pid": holder.pid}, _now()
    elif starts and kind in ("started", "interrupted", "cancelled"):
        state = "interrupted"
    else:
        state = "pending"
    start = starts[-1].get("time") if starts else None
    return StageStatus(
        directory=directory, state=state, attempts=len(starts), last_event=kind,
        last_time=last.get("time"), started=start,
        finished=last.get("time") if state == "done" else None,
        duration_s=_seconds(start, end), host=runner.get("host"), pid=runner.get("pid"),
        error=last.get("error") if state == "failed" else None,
        job_id=next((event.get("job_id") for event in reversed(events)
                     if event["event"] == "submitted"), None))


def derive(states: Mapping[str, str], upstream: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """``states`` with every pending stage below a failed or dep-failed one made ``dep-failed``.

    ``upstream[name]`` lists the stages ``name`` starts from or evaluates; the order of either
    mapping does not matter. Pure: reads and writes nothing.
    """
    result: dict[str, str] = {}
    visiting: set[str] = set()

    def resolve(name: str, below: str) -> str:
        if name in result:
            return result[name]
        if name not in states:
            raise ValueError(f"upstream[{below!r}]: names {name!r}, which has no state; give "
                             "every stage of the DAG a state")
        if name in visiting:
            raise ValueError(f"upstream[{name!r}]: the stage depends on itself (a cycle)")
        visiting.add(name)
        state = states[name]
        if state == "pending" and any(resolve(parent, name) in ("failed", DEP_FAILED)
                                      for parent in upstream.get(name, ())):
            state = DEP_FAILED
        visiting.discard(name)
        result[name] = state
        return state

    for name in states:
        resolve(name, name)
    return result


# ------------------------------------------------------------------- index, pointer, provenance

def _write_atomic(path: pathlib.Path, text: str) -> None:
    """Writes ``path`` whole or not at all: a temporary file beside it, then ``os.replace``."""
    temporary = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    try:
        with open(temporary, "x") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(item) for item in value)
    return " ".join(str(value).split()).replace("|", "\\|")


def write_index(grid_dir: PathArg, rows: Sequence[Mapping[str, Any]],
                grid: Optional[Mapping[str, Any]] = None) -> None:
    """Writes ``index.md`` (a table of ``INDEX_COLUMNS``) and ``index.json`` (the rows as given,
    after ``grid``: what the grid file says of itself, e.g. its scale, for readers of results),
    each replaced atomically; a row that JSON cannot hold leaves both as they were."""
    directory = pathlib.Path(grid_dir)
    stamp = _now()
    document = json.dumps({**(grid or {}), "updated": stamp,
                           "stages": [dict(row) for row in rows]},
                          indent=2, allow_nan=False) + "\n"
    lines = [f"# {directory.name}", "",
             f"Updated {stamp} by archobj grid; `archobj status` reads the stage directories.", "",
             "| " + " | ".join(INDEX_COLUMNS) + " |", "|" + " --- |" * len(INDEX_COLUMNS)]
    lines += ["| " + " | ".join(_cell(row.get(column)) for column in INDEX_COLUMNS) + " |"
              for row in rows]
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / INDEX_MD, "\n".join(lines) + "\n")
    _write_atomic(directory / INDEX_JSON, document)


def point(grid_dir: PathArg, readable_name: str, target_dir_name: str) -> None:
    """Makes ``grid_dir/readable_name`` a relative symlink to ``target_dir_name``, replaced
    atomically (readers see the old or the new target, never nothing); the old target stays."""
    directory = pathlib.Path(grid_dir)
    for field, name in (("readable_name", readable_name), ("target_dir_name", target_dir_name)):
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"{field}={name!r}: must be a plain name inside {directory}, without "
                             "'/' or a leading '.'")
    if readable_name == target_dir_name:
        raise ValueError(f"readable_name={readable_name!r}: equals target_dir_name; a pointer "
                         "needs its own name")
    link = directory / readable_name
    if link.exists() and not link.is_symlink():
        raise ValueError(f"{link}: is a real {'directory' if link.is_dir() else 'file'}, not a "
                         "pointer to a stage version; move it aside and rerun")
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".{readable_name}.{os.urandom(4).hex()}.tmp"
    os.symlink(target_dir_name, temporary)
    try:
        os.replace(temporary, link)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _git(arguments: Sequence[str], cwd: pathlib.Path) -> Optional[str]:
    import subprocess
    try:
        done = subprocess.run(["git", "--no-optional-locks", *arguments], cwd=cwd,
                              capture_output=True, text=True, timeout=2, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment() -> dict[str, Any]:
    """What ran: archobj's version, the git commit of the checkout holding ``harness`` ("unknown"
    outside one) and whether its tree differs (None when unknown), host, user, Python."""
    import getpass
    from importlib import metadata
    try:
        version = metadata.version("archobj")
    except metadata.PackageNotFoundError:
        version = "unknown"
    package = pathlib.Path(__file__).resolve().parents[1]
    tracked = _git(["ls-files", "--error-unmatch", "--", "__init__.py"], package) is not None
    commit = (_git(["rev-parse", "HEAD"], package) if tracked else None) or "unknown"
    changes = _git(["status", "--porcelain"], package) if tracked else None
    try:
        user = getpass.getuser()
    except Exception:   # no passwd entry (containers): KeyError, or OSError on 3.13
        user = os.environ.get("USER", "unknown")
    return {"archobj_version": version, "git_commit": commit,
            "git_dirty": None if changes is None else bool(changes), "host": HOST, "user": user,
            "python": sys.version.split()[0]}


def read_json(path: pathlib.Path) -> dict[str, Any]:
    """A JSON object file's contents; {} when it is missing, unreadable or not an object."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _update_provenance(stage_dir: PathArg, **fields: Any) -> None:
    path = pathlib.Path(stage_dir) / PROVENANCE_FILE
    _write_atomic(path, json.dumps({**read_json(path), **fields}, indent=2) + "\n")


def write_provenance(stage_dir: PathArg, record: Mapping[str, Any]) -> dict[str, Any]:
    """Writes ``provenance.json``: ``record`` (identity, upstream identities, ...), this process's
    ``environment()`` and the times ``mark_started``/``mark_finished`` recorded; returns it.

    Call it at each attempt's start: the environment is the newest attempt's.
    """
    reserved = [key for key in PROVENANCE_OWN if key in record]
    if reserved:
        raise ValueError(f"provenance record: key {reserved[0]!r} is filled by state.py "
                         f"({', '.join(PROVENANCE_OWN)}); rename it")
    directory = pathlib.Path(stage_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PROVENANCE_FILE
    times = {key: value for key, value in read_json(path).items() if key in PROVENANCE_OWN[1:]}
    document = {**record, "environment": environment(), **times}
    _write_atomic(path, json.dumps(document, indent=2) + "\n")
    return document
