"""The grid runner's on-disk state (harness/grid/state.py): events, locks across processes, status
after a kill, failures, dep-failed, the index, the current-version pointer, provenance, and that
reading status imports nothing heavy."""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading

import pytest

from harness.grid import state
from helpers import assert_one_line_error

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = {"jax", "jaxlib", "tensorflow", "orbax", "flax", "numpy", "seqio", "torch"}


def _python(code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, **kwargs)


def test_events_append_and_read_back_and_a_torn_last_line_is_ignored(tmp_path):
    stage = tmp_path / "grid" / "cd_flm-1a2b3c4d"
    assert state.read_events(stage) == [] and state.stage_status(stage).state == "pending"
    assert not stage.exists(), "reading the status of a stage must not create its directory"
    state.mark_submitted(stage, "1234")
    assert state.mark_started(stage, {"resumed_from": 0}) == 1
    events = state.read_events(stage)
    assert [event["event"] for event in events] == ["submitted", "started"]
    assert events[0]["job_id"] == "1234" and events[0]["attempt"] == 1
    assert events[1]["resumed_from"] == 0 and events[1]["pid"] == os.getpid()
    assert events[1]["host"] == state.HOST and events[1]["time"].endswith("+00:00")
    # A writer killed mid-line: the torn line is skipped and the next event starts a new line.
    with open(stage / state.EVENTS_FILE, "ab") as file:
        file.write(b'{"event": "finished", "ti')
    assert [event["event"] for event in state.read_events(stage)] == ["submitted", "started"]
    assert state.stage_status(stage).state == "interrupted"
    state.mark_finished(stage)
    assert [event["event"] for event in state.read_events(stage)] == [
        "submitted", "started", "finished"]
    status = state.stage_status(stage)
    assert (status.state, status.attempts, status.job_id) == ("done", 1, "1234")
    assert status.finished and status.duration_s is not None and status.duration_s >= 0
    with pytest.raises(ValueError) as excinfo:
        state.append_event(stage, "exploded")
    assert_one_line_error(excinfo, "exploded", "started")


def test_concurrent_writers_never_interleave_lines(tmp_path):
    stage = tmp_path / "stage"
    code = ("import sys\nfrom harness.grid import state\n"
            "for i in range(300): state.append_event(sys.argv[1], 'interrupted', n=i, "
            "writer=sys.argv[2], pad='x' * 200)")
    writers = [subprocess.Popen([sys.executable, "-c", code, str(stage), name], cwd=ROOT)
               for name in ("a", "b")]
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0]
    lines = (stage / state.EVENTS_FILE).read_text().splitlines()
    assert len(lines) == 600, "no blank or merged lines"
    events = [json.loads(line) for line in lines]
    for name in ("a", "b"):
        assert [event["n"] for event in events if event["writer"] == name] == list(range(300))


def test_a_held_lock_is_busy_and_a_killed_holder_leaves_the_stage_interrupted(tmp_path):
    stage = tmp_path / "grid" / "nd_plm-00000000"
    code = ("import sys, time\nfrom harness.grid import state\n"
            "lock = state.StageLock(sys.argv[1]).acquire()\nstate.mark_started(sys.argv[1])\n"
            "print('held', flush=True)\ntime.sleep(120)")
    child = subprocess.Popen([sys.executable, "-c", code, str(stage)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        assert state.acquire(stage, wait_s=0.1) is None
        with pytest.raises(state.StageBusy) as excinfo:
            state.StageLock(stage, wait_s=0.1).acquire()
        assert_one_line_error(excinfo, str(stage), f"pid {child.pid}", state.HOST)
        assert excinfo.value.holder.pid == child.pid and excinfo.value.holder.alive
        status = state.stage_status(stage)
        assert (status.state, status.pid, status.host) == ("running", child.pid, state.HOST)
        assert status.duration_s is not None
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert state.read_events(stage)[-1]["event"] == "started"
    status = state.stage_status(stage)
    assert (status.state, status.attempts, status.pid) == ("interrupted", 1, child.pid)
    lock = state.acquire(stage, wait_s=0.1)
    assert lock is not None and lock.held
    try:
        assert state.mark_started(stage) == 2
        status = state.stage_status(stage)   # this process holds it: running, read without
        assert (status.state, status.pid) == ("running", os.getpid())   # touching the lock file
        assert state.acquire(stage, wait_s=0) is None, "a second lock in the same process"
    finally:
        lock.release()
    assert (stage / state.LOCK_FILE).read_text() == "", "a released lock names no holder"
    assert state.stage_status(stage).state == "interrupted"
    with state.StageLock(stage):
        state.mark_finished(stage)
    assert state.stage_status(stage).state == "done"


def test_a_held_lock_whose_recorded_pid_is_gone_reads_interrupted(tmp_path):
    """The second signal: the lock is held (here by an inherited descriptor), but the runner it
    names on this host has exited."""
    stage = tmp_path / "stage"
    state.mark_started(stage)
    done = _python("import sys\nfrom harness.grid import state\n"
                   "print(state.StageLock(sys.argv[1]).acquire().holder.pid)", str(stage))
    dead_pid = int(done.stdout)
    fd = os.open(stage / state.LOCK_FILE, os.O_RDWR)
    try:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": state.HOST, "pid": dead_pid, "time": "t"}).encode(), 0)
        assert state.stage_status(stage).state == "interrupted"
        with pytest.raises(state.StageBusy) as excinfo:
            state.StageLock(stage, wait_s=0).acquire()
        assert_one_line_error(excinfo, f"pid {dead_pid}", "has exited")
    finally:
        os.close(fd)


def test_a_failure_writes_its_traceback_and_a_one_line_event(tmp_path):
    stage = tmp_path / "stage"
    state.mark_started(stage)

    def train():
        raise ValueError("train.steps=0:\n  must be positive")
    try:
        train()
    except ValueError as error:
        line = state.record_failure(stage, error)
    assert line == "ValueError: train.steps=0: must be positive"
    traceback_text = (stage / state.ERROR_FILE).read_text()
    assert "Traceback" in traceback_text and "in train" in traceback_text
    event = state.read_events(stage)[-1]
    assert (event["event"], event["error"], event["traceback_file"], event["attempt"]) == (
        "failed", line, "error.txt", 1)
    status = state.stage_status(stage)
    assert (status.state, status.error) == ("failed", line)
    assert [path.name for path in stage.iterdir() if path.name.startswith(".")] == []


@pytest.mark.parametrize("order", range(6))
def test_derive_marks_pending_descendants_dep_failed_in_any_order(order):
    upstream = {"cd_flm": [], "cd_flm.eai": ["cd_flm"], "adapt": ["cd_flm"],
                "adapt.eai": ["adapt"], "mtf": ["adapt"], "nd_plm": [], "nd_plm.eai": ["nd_plm"],
                "done_below": ["cd_flm"]}
    states = {"cd_flm": "failed", "cd_flm.eai": "pending", "adapt": "pending",
              "adapt.eai": "pending", "mtf": "pending", "nd_plm": "running",
              "nd_plm.eai": "pending", "done_below": "done"}
    names = list(itertools.permutations(states))[order * 997 % 40320]
    shuffled = {name: states[name] for name in names}
    shuffled_upstream = {name: upstream[name] for name in reversed(names)}
    derived = state.derive(shuffled, shuffled_upstream)
    assert derived == {**states, "cd_flm.eai": "dep-failed", "adapt": "dep-failed",
                       "adapt.eai": "dep-failed", "mtf": "dep-failed"}
    assert shuffled["adapt"] == "pending", "derive must not change its input"


def test_derive_rejects_unknown_stages_and_cycles():
    with pytest.raises(ValueError) as excinfo:
        state.derive({"a": "pending"}, {"a": ["ghost"]})
    assert_one_line_error(excinfo, "'ghost'", "'a'")
    with pytest.raises(ValueError) as excinfo:
        state.derive({"a": "pending", "b": "failed", "c": "pending"},
                     {"a": ["c"], "c": ["a", "b"]})
    assert_one_line_error(excinfo, "cycle")


def test_the_index_is_written_whole_or_not_at_all(tmp_path):
    grid = tmp_path / "tiny"
    rows = [{"stage": "cd_flm", "status": "done", "directory": "cd_flm-1a2b3c4d",
             "identity": "1a2b3c4d" + "0" * 56, "cells": ["cd_flm@64", "cd_flm@128"]},
            {"stage": "a|b", "status": "dep-failed", "directory": "a-1", "identity": "1",
             "cells": [], "extra": 3}]
    state.write_index(grid, rows)
    assert json.loads((grid / state.INDEX_JSON).read_text())["stages"] == rows
    table = (grid / state.INDEX_MD).read_text()
    assert "| stage | status | directory | identity | cells |" in table
    assert "| cd_flm | done | cd_flm-1a2b3c4d | 1a2b3c4d" in table
    assert "cd_flm@64, cd_flm@128" in table
    assert "| a\\|b | dep-failed |" in table
    errors, stop = [], threading.Event()

    def read():   # a reader never sees a missing, empty or half-written index
        while not stop.is_set():
            try:
                json.loads((grid / state.INDEX_JSON).read_text())
            except (OSError, ValueError) as error:
                errors.append(error)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(200):
            state.write_index(grid, rows)
    finally:
        stop.set()
        reader.join()
    assert errors == []
    before = {name: (grid / name).read_text() for name in (state.INDEX_MD, state.INDEX_JSON)}
    with pytest.raises((TypeError, ValueError)):
        state.write_index(grid, rows + [{"stage": "x", "status": object()}])
    assert {name: (grid / name).read_text() for name in before} == before
    assert sorted(path.name for path in grid.iterdir()) == [state.INDEX_JSON, state.INDEX_MD]


def test_point_replaces_the_pointer_atomically_and_keeps_old_versions(tmp_path):
    grid = tmp_path / "tiny"
    for version in ("cd_flm-00000001", "cd_flm-00000002"):
        (grid / version).mkdir(parents=True)
        (grid / version / "config.json").write_text(version)
    state.point(grid, "cd_flm", "cd_flm-00000001")
    assert os.readlink(grid / "cd_flm") == "cd_flm-00000001"   # relative: the grid can move
    seen, errors, stop = set(), [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                seen.add(os.readlink(grid / "cd_flm"))
            except OSError as error:
                errors.append(error)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(400):
            state.point(grid, "cd_flm", f"cd_flm-0000000{1 + i % 2}")
    finally:
        stop.set()
        reader.join()
    assert errors == [] and seen <= {"cd_flm-00000001", "cd_flm-00000002"}
    state.point(grid, "cd_flm", "cd_flm-00000002")
    assert (grid / "cd_flm" / "config.json").read_text() == "cd_flm-00000002"
    assert (grid / "cd_flm-00000001" / "config.json").read_text() == "cd_flm-00000001"
    assert sorted(path.name for path in grid.iterdir()) == [
        "cd_flm", "cd_flm-00000001", "cd_flm-00000002"]
    with pytest.raises(ValueError) as excinfo:
        state.point(grid, "cd_flm-00000001", "cd_flm-00000002")
    assert_one_line_error(excinfo, "cd_flm-00000001", "real directory")
    with pytest.raises(ValueError) as excinfo:
        state.point(grid, "../escape", "cd_flm-00000002")
    assert_one_line_error(excinfo, "readable_name='../escape'")


def test_provenance_records_the_callers_fields_the_code_version_and_times(tmp_path):
    stage = tmp_path / "stage"
    record = {"identity": "ab" * 32, "upstream": {"cd_flm": "cd" * 32}, "stage": "adapt"}
    state.write_provenance(stage, record)
    document = json.loads((stage / state.PROVENANCE_FILE).read_text())
    assert {key: document[key] for key in record} == record
    environment = document["environment"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert environment["git_commit"] == (head.stdout.strip() if head.returncode == 0
                                         else "unknown")
    assert environment["git_dirty"] in (True, False, None)
    assert environment["archobj_version"] and environment["user"]
    assert environment["host"] == state.HOST
    assert environment["python"] == ".".join(map(str, sys.version_info[:3]))
    state.mark_started(stage)
    started = json.loads((stage / state.PROVENANCE_FILE).read_text())
    assert started["attempt"] == 1 and started["started"] and started["finished"] is None
    state.write_provenance(stage, record)   # the next write keeps the times
    state.mark_finished(stage)
    document = json.loads((stage / state.PROVENANCE_FILE).read_text())
    assert document["started"] == started["started"] and document["finished"]
    assert document["identity"] == record["identity"]
    with pytest.raises(ValueError) as excinfo:
        state.write_provenance(stage, {"started": "yesterday"})
    assert_one_line_error(excinfo, "'started'")


def test_status_of_a_hundred_stages_imports_nothing_heavy(tmp_path):
    grid = tmp_path / "grid"
    for i in range(100):
        stage = grid / f"stage{i:03d}-{i:08x}"
        state.mark_started(stage)
        if i % 3 == 0:
            state.mark_finished(stage)
        elif i % 3 == 1:
            with state.StageLock(stage):
                pass
    code = ("import sys, time\nstart = time.perf_counter()\nfrom harness.grid import state\n"
            "import pathlib\n"
            "stages = sorted(pathlib.Path(sys.argv[1]).iterdir())\n"
            "statuses = [state.stage_status(stage) for stage in stages]\n"
            "print(f'{time.perf_counter() - start:.3f}', sorted({s.state for s in statuses}))\n"
            "print(' '.join(sys.modules))")
    done = _python(code, str(grid))
    assert done.returncode == 0, done.stderr
    timing, modules = done.stdout.splitlines()
    print(f"import + status of 100 stages: {timing.split()[0]} s")
    assert timing.split(maxsplit=1)[1] == "['done', 'interrupted']"
    loaded = {name.split(".")[0] for name in modules.split()}
    assert not HEAVY & loaded, HEAVY & loaded
    assert not {"subprocess", "traceback", "tempfile"} & loaded, "status needs no writer imports"
