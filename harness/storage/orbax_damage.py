"""orbax restores that fail cleanly: what is wrong with a damaged item, in a few words, and no read
of it left running to print tracebacks afterwards.

Used by ``harness.storage.checkpoint.load_model`` and ``harness.train.train_checkpoint.TrainCheckpointer.restore``:

    with waits_for_failed_reads():
        try:
            manager.restore(step, args=...)
        except Exception as e:
            raise MyError(describe(e, item_dir)) from e

The machinery depends on orbax 0.12.8's private ``asyncio_utils._run_sync_via_new_loop``;
``tests/test_restore_output.py`` fails if an upgrade renames it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import re
import threading
from typing import Any, Iterator, Optional

import jax
from orbax.checkpoint._src import asyncio_utils as _orbax_asyncio

# -------------------------------------------------------------------------------------------------
# Damage: what is wrong with a step, in a few words, and no read of it left running.
# -------------------------------------------------------------------------------------------------

# The files that orbax (0.12.8) always writes and cannot restore an item without: the JSON item's
# document, and the OCDBT manifest of an item with at least one array (an empty tree, such as
# optax.sgd's state, has none). orbax restores without the others (``_METADATA``, ``_sharding``,
# ``array_metadatas``, the per-process manifests), so their absence is not damage.
_JSON_FILE = "metadata"
_OCDBT_MANIFEST = "manifest.ocdbt"


def missing_file(item_dir: pathlib.Path, target: Any, json_item: bool = False) -> str:
    """'' unless ``item_dir`` lacks a file that restoring it needs, else 'file missing: <path>'.

    ``target``: the tree the item restores into (an item without arrays has no manifest);
    ``json_item``: a ``JsonSave`` item rather than arrays.
    """
    if not item_dir.is_dir():
        return f"directory missing: {item_dir}"
    if json_item:
        needed = item_dir / _JSON_FILE
    elif jax.tree.leaves(target):
        needed = item_dir / _OCDBT_MANIFEST
    else:
        return ""
    return "" if needed.is_file() else f"file missing: {needed}"


# TensorStore's status codes, which open each of its messages (outermost error first).
_TS_STATUS = re.compile(r"\b(OUT_OF_RANGE|NOT_FOUND|DATA_LOSS|FAILED_PRECONDITION|INVALID_ARGUMENT|"
                        r"PERMISSION_DENIED|UNAVAILABLE|INTERNAL|UNKNOWN|ABORTED|RESOURCE_EXHAUSTED"
                        r"|UNIMPLEMENTED|CANCELLED|DEADLINE_EXCEEDED|ALREADY_EXISTS): ")
_TS_KEY = re.compile(r'(?:Error reading|Metadata at) "([^"]+?)(?:/[^/"]*)?"')
_TS_FILE = re.compile(r'local file "([^"]+)"')


def describe(error: BaseException, item_dir: pathlib.Path) -> str:
    """Why an item could not be restored, in a few words (never TensorStore's specs or reprs).

    E.g. "data truncated in decoder.layers.mlp.wi_0", "file missing: <path>", "file corrupt:
    <path>", "not valid JSON: <path>".
    """
    chain = []
    while error is not None and error not in chain and len(chain) < 10:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for e in chain:
        if isinstance(e, json.JSONDecodeError):
            return f"not valid JSON: {_first_bad_json(item_dir) or item_dir}"
        if isinstance(e, FileNotFoundError):
            missing = e.filename or re.sub(r"^File (.*) not found\.?$", r"\1", str(e))
            return f"file missing: {missing}"
        if isinstance(e, KeyError) and "was not found in the checkpoint" in str(e):
            return f"directory missing: {item_dir}"
    # TensorStore: the innermost message is the most specific (an array read wraps the chunk read's
    # error in a bare Exception whose text is the repr of a TensorStore object).
    for e in reversed(chain):
        text = " ".join(str(e).split())
        status = _TS_STATUS.search(text)
        if not status:
            continue
        code, detail = status.group(1), text[status.end():]
        detail = re.split(r" \[tensorstore_spec", detail)[0]
        key = _TS_KEY.search(detail)
        array = key.group(1) if key and not key.group(1).startswith(".") else ""
        where = f" in {array}" if array else ""
        files = _TS_FILE.findall(detail)
        if code == "OUT_OF_RANGE" or "is not valid for value of size" in detail \
                or "Truncated" in detail:
            return f"data truncated{where}"
        if code == "NOT_FOUND":
            if "Error reading Byte range" in detail and files:
                return f"file missing: {files[-1]}"
            return f"array missing: {array}" if array else "file missing"
        if code == "DATA_LOSS" and "Error decoding local file" in detail and files:
            return f"file corrupt: {files[-1]}"
        if code in ("DATA_LOSS", "FAILED_PRECONDITION"):
            return f"data corrupt{where}"
        return _short(f"{code}: {detail}")
    return _short(str(chain[0]) or type(chain[0]).__name__)


def _first_bad_json(item_dir: pathlib.Path) -> Optional[pathlib.Path]:
    """The first JSON file of an item (orbax's metadata files) that does not parse."""
    if not item_dir.is_dir():
        return None
    for path in sorted(item_dir.rglob("*")):
        if path.is_file() and (path.name in (_JSON_FILE, "_METADATA", "_sharding")
                               or path.parent.name == "array_metadatas"):
            try:
                json.loads(path.read_bytes())
            except (ValueError, OSError):
                return path
    return None


def _short(text: str, limit: int = 160) -> str:
    """One line without TensorStore's JSON specs and object reprs, at most ``limit`` characters."""
    text = re.sub(r"\s*\[tensorstore_spec.*", "", " ".join(text.split()))
    text = re.sub(r"\s*See full TensorStore details:.*", "", text)
    text = re.sub(r"<bound method [^>]*>?", "", text).strip()
    return text if len(text) <= limit else text[:limit] + "..."


# orbax runs each synchronous call (a restore) in a fresh event loop, closed as soon as the call's
# coroutine returns; when one of several concurrent reads fails, the coroutine raises at once and
# the loop is closed with the other reads still in flight. Their completion callbacks then raise
# "Event loop is closed" and their tasks "Task exception was never retrieved" / "Task was destroyed
# but it is pending", each printed with a traceback (hundreds of lines for a damaged model). Within
# waits_for_failed_reads, orbax runs its coroutines with _run_sync_and_drain instead: the
# same loop, except that after a failure it waits for every task it started (each a read that ends
# with the failure of its own file, or succeeds) and marks their errors as seen, before closing.
# Waiting rather than cancelling: a cancelled task can still be called back by TensorStore after
# the loop is closed (measured: cancelling left tracebacks, waiting never did).
_orbax_run_sync = getattr(_orbax_asyncio, "_run_sync_via_new_loop", None)
_drain_lock = threading.Lock()
_drain_users = 0


@contextlib.contextmanager
def waits_for_failed_reads() -> Iterator[None]:
    """While active (in any thread), a failed orbax call waits for the reads it started."""
    global _drain_users  # pylint: disable=global-statement
    if _orbax_run_sync is None:  # another orbax version: tests/test_restore_output.py says so
        yield
        return
    # pylint: disable=protected-access
    with _drain_lock:
        _drain_users += 1
        _orbax_asyncio._run_sync_via_new_loop = _run_sync_and_drain
    try:
        yield
    finally:
        with _drain_lock:
            _drain_users -= 1
            if not _drain_users:
                _orbax_asyncio._run_sync_via_new_loop = _orbax_run_sync


def _run_sync_and_drain(coro: Any) -> Any:
    """orbax's ``_run_sync_via_new_loop``, except that a failure leaves no task behind."""
    loop = asyncio.new_event_loop()
    started: list[asyncio.Task] = []

    def task_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        started.append(task)
        return task

    loop.set_task_factory(task_factory)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    except Exception:
        # Not for KeyboardInterrupt and the like: those leave at once, as orbax's own loop does.
        while True:
            pending = [t for t in started if not t.done()]
            if not pending:
                break
            loop.run_until_complete(asyncio.wait(pending))
        for task in started:
            if not task.cancelled():
                task.exception()  # the failure already raised, or one of the same damage
        raise
    finally:
        asyncio.set_event_loop(None)
        loop.close()
