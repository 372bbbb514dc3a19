"""Resume from the input pipeline's saved state (harness/train/data.py, train_checkpoint.py "data"
item): exact against an uninterrupted run for a pretraining objective and for MTF, one state file
per checkpoint, and the replay fallback (exact too) for a checkpoint without a state or with a
damaged one; plus the checkpointable generator source on its own."""

from __future__ import annotations

import logging

import pytest

from harness.train import config as config_lib
from harness.train.loop import run
from harness.train.train_checkpoint import DATA_ITEM, data_state_name
from helpers import assert_one_line_error, write_corpus

STATE_FILE = f"{data_state_name(0, 1)}.index"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return str(write_corpus(tmp_path_factory.mktemp("corpus") / "docs.txt"))


def _config(corpus, run_dir, *extra):
    # nd:mlm: span corruption draws the most randomness per example of the three objectives.
    return config_lib.load_config(None, [
        "name=state_run", f"run_dir={run_dir}", "model.preset=tiny", "model.architecture=nd",
        "model.dtype=float32", "data.objective=mlm", f"data.source={corpus}",
        "data.vocabulary=byte", "data.total_length=32", "train.batch_size=8", "train.log_every=1",
        "checkpoint.every=2", "checkpoint.keep=5", "checkpoint.async_save=true", *extra])


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "archobj.train"]


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    return run(_config(corpus, run_dir, "train.steps=8"), progress=False), run_dir


def test_pretraining_resumes_exactly_from_the_state_and_falls_back_to_replay(
        corpus, tmp_path, uninterrupted, caplog):
    """One run directory stopped three times: resumed from the saved state (step 2), from a
    checkpoint without one (step 4, as written before states were saved), and from a damaged one
    (step 6); every segment continues the uninterrupted losses bit for bit."""
    reference, _ = uninterrupted
    run_dir = tmp_path / "run"
    losses = run(_config(corpus, run_dir, "train.steps=2"), progress=False).losses
    assert (run_dir / "checkpoints" / "2" / DATA_ITEM / STATE_FILE).is_file()

    caplog.set_level(logging.INFO, logger="archobj.train")
    resumed = run(_config(corpus, run_dir, "train.steps=4"), progress=False)
    assert resumed.first_step == 2
    losses += resumed.losses
    assert "data: restored the input pipeline's state saved at step 2" in _messages(caplog)

    # A checkpoint without the data item, as every checkpoint written before this change.
    import shutil
    shutil.rmtree(run_dir / "checkpoints" / "4" / DATA_ITEM)
    caplog.clear()
    losses += run(_config(corpus, run_dir, "train.steps=6"), progress=False).losses
    (line,) = [m for m in _messages(caplog) if m.startswith("data: ")]
    assert "holds no input-pipeline state" in line and "replaying 4 batches" in line

    # A damaged state: the checkpoint is still restored, the stream replayed.
    data_file = next((run_dir / "checkpoints" / "6" / DATA_ITEM).glob("*.data-*"))
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    caplog.clear()
    resumed = run(_config(corpus, run_dir, "train.steps=8"), progress=False)
    assert resumed.first_step == 6
    losses += resumed.losses
    (line,) = [m for m in _messages(caplog) if m.startswith("data: ")]
    assert "cannot restore the input pipeline's state" in line and "replaying 6 batches" in line
    assert "\n" not in line

    assert losses == reference.losses  # bitwise, not approximately
    for step in (2, 6, 8):  # every checkpoint written since holds its state
        assert (run_dir / "checkpoints" / str(step) / DATA_ITEM / STATE_FILE).is_file(), step
    startup = [m for m in _messages(caplog) if m.startswith("start-up: ")]
    assert len(startup) == 1 and "first step done at" in startup[0]


@pytest.fixture(scope="module")
def t0_fixture(tmp_path_factory):
    from objectives.t0 import make_fixture
    directory = tmp_path_factory.mktemp("t0")
    make_fixture(directory)
    return str(directory)


def test_mtf_stream_restores_exactly(t0_fixture, tmp_path):
    """The T0 mixture (one source reader and one shuffle buffer per task, all in the saved state):
    a stream restored in a new pipeline continues with exactly the batches of the uninterrupted
    one (the loop-level test below, slow, checks the losses)."""
    import numpy as np

    from harness.train.data import mtf_batches

    def stream():
        return mtf_batches("nd", t0_fixture, "byte", 4, inputs_length=40, targets_length=16)

    first = stream()
    for _ in range(3):
        next(first)
    first.save_state(str(tmp_path / "state"))
    expected = [next(first) for _ in range(3)]
    restored = stream()
    restored.restore_state(str(tmp_path / "state"))
    for a, b in zip(expected, [next(restored) for _ in range(3)], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.slow
def test_mtf_resumes_exactly_from_the_state(corpus, tmp_path, uninterrupted, t0_fixture, caplog):
    """The T0 mixture end to end: the resumed finetuning stage's losses equal the uninterrupted
    one's."""
    def config(run_dir, steps):
        return _config(corpus, run_dir, "data.objective=mtf", f"data.source={t0_fixture}",
                       "data.inputs_length=40", "data.targets_length=16", "stage.kind=finetune",
                       f"stage.init_from={uninterrupted[1]}", "optim.schedule=constant",
                       "optim.learning_rate=1e-3", f"train.steps={steps}")

    reference = run(config(tmp_path / "whole", 4), progress=False).losses
    first = run(config(tmp_path / "parts", 2), progress=False).losses
    caplog.set_level(logging.INFO, logger="archobj.train")
    rest = run(config(tmp_path / "parts", 4), progress=False).losses
    assert "data: restored the input pipeline's state saved at step 2" in _messages(caplog)
    assert first + rest == reference


def test_checkpointable_generator_matches_from_generator_and_restores(tmp_path):
    """The source swapped in for ``Dataset.from_generator``: the same elements through a shuffle,
    and a state saved mid-stream restores into a new pipeline (a new reader) exactly; a damaged
    state is one line."""
    import tensorflow as tf

    from harness.train.data import (Batches, DataStateError, checkpointable_from_generator,
                                    checkpointable_sources)

    def chunks():
        for start in range(0, 100, 7):
            yield {"text": [f"doc {i} ü" for i in range(start, min(start + 7, 100))]}

    signature = {"text": tf.TensorSpec((None,), tf.string)}

    def pipeline(dataset):
        return (dataset.unbatch().repeat(2).shuffle(20, seed=1)
                .map(lambda x: {"x": tf.strings.length(x["text"]), "t": x["text"]}).batch(5))

    def batches(dataset):
        return [{k: v.tolist() for k, v in b.items()} for b in Batches(lambda: pipeline(dataset))]

    original = tf.data.Dataset.from_generator(chunks, output_signature=signature)
    expected = batches(original)
    assert batches(checkpointable_from_generator(chunks, signature)) == expected
    with checkpointable_sources():
        swapped = tf.data.Dataset.from_generator(chunks, output_signature=signature)

    stream = Batches(lambda: pipeline(swapped))
    head = [next(stream) for _ in range(13)]
    stream.save_state(str(tmp_path / "state"))
    restored = Batches(lambda: pipeline(checkpointable_from_generator(chunks, signature)))
    restored.restore_state(str(tmp_path / "state"))
    got = [{k: v.tolist() for k, v in b.items()} for b in [*head, *restored]]
    assert got == expected

    # TensorFlow's own generator dataset (the swap is undone on leaving checkpointable_sources)
    # cannot be saved: one line, and nothing written.
    unsaveable = Batches(lambda: pipeline(
        tf.data.Dataset.from_generator(chunks, output_signature=signature)))
    next(unsaveable)
    with pytest.raises(DataStateError) as excinfo:
        unsaveable.save_state(str(tmp_path / "unsaveable"))
    assert_one_line_error(excinfo, "GeneratorDataset does not support checkpointing")
    assert not list(tmp_path.glob("unsaveable*"))
    (tmp_path / "state.index").write_bytes(b"not an index")
    with pytest.raises(DataStateError) as excinfo:
        Batches(lambda: pipeline(swapped)).restore_state(str(tmp_path / "state"))
    assert_one_line_error(excinfo, str(tmp_path / "state"))


def test_the_stream_is_the_one_tensorflow_and_autograph_build(corpus):
    """What data.py changes while it builds (checkpointable sources, task preprocessors traced
    without autograph) changes no element: the batches equal those of the pipeline built by
    objectives.tasks with TensorFlow's own ``from_generator`` and autograph, which is the stream a
    checkpoint written before this change replays."""
    import itertools

    import numpy as np

    from harness.train.data import Batches, DataSpec, pretraining_batches
    from objectives import lengths, sources, tasks, vocab

    spec = DataSpec(architecture="nd", objective="mlm", source=corpus, vocabulary="byte",
                    total_length=32)
    ours = list(itertools.islice(pretraining_batches(spec, 4), 3))

    def plain():
        name = tasks.register_pretraining_task(
            "mlm", "nd", sources.make_data_source(sources.parse_source(corpus)),
            vocab.load_vocabulary("byte"))
        return tasks.get_dataset(name, "nd", "mlm", lengths.task_feature_lengths(
            "mlm", "nd", total_length=32), seed=0).batch(4, drop_remainder=True)

    theirs = list(itertools.islice(Batches(plain), 3))
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_shared_streams_give_each_reader_the_stream_and_its_exact_states(corpus, tmp_path,
                                                                         monkeypatch):
    """Inside ``shared_streams`` (the grid's stages in one process), readers of one stream get the
    batches a pipeline of their own would give, wherever they stop; a state saved where the kept
    pipeline is, or behind it, restores into a new pipeline at the next batch; the pipeline is
    built once for readers that the kept batches and the kept pipeline can serve."""
    # cd:flm: the cheapest pipeline to build (this test builds three).
    import itertools

    import numpy as np

    from harness.train import data

    spec = data.DataSpec(architecture="cd", objective="flm", source=corpus, vocabulary="byte",
                         total_length=32)
    reference = list(itertools.islice(data.pretraining_batches(spec, 4), 9))
    builds = []
    original = data.build_dataset
    monkeypatch.setattr(data, "build_dataset", lambda *a, **k: builds.append(1) or original(*a, **k))

    def assert_stream(batches, start):
        for offset, batch in enumerate(batches):
            for key, value in reference[start + offset].items():
                np.testing.assert_array_equal(batch[key], value, err_msg=f"{start + offset}:{key}")

    def restored_next(prefix):
        fresh = data.Batches(lambda: original(spec, batch_size=4))
        fresh.restore_state(prefix)
        return next(fresh)

    with data.shared_streams():
        first = data.pretraining_batches(spec, 4)
        assert_stream([next(first) for _ in range(5)], 0)           # kept pipeline at 5
        first.save_state(str(tmp_path / "at5"))
        assert len(builds) == 1

        behind = data.pretraining_batches(spec, 4)                   # a shorter stage
        assert_stream([next(behind) for _ in range(3)], 0)
        behind.save_state(str(tmp_path / "at3"))                     # behind the kept pipeline
        assert_stream([next(behind)], 3)

        longer = data.pretraining_batches(spec, 4, start_step=2)     # past the kept pipeline
        assert_stream([next(longer) for _ in range(6)], 2)           # kept pipeline now at 8
        longer.save_state(str(tmp_path / "at8"))
        assert len(builds) == 2                                      # + behind's own
        with pytest.raises(ValueError, match="already taken"):
            longer.restore_state(str(tmp_path / "at5"))

        resumed = data.pretraining_batches(spec, 4)                  # a resumed stage
        resumed.restore_state(str(tmp_path / "at5"))
        assert_stream([next(resumed)], 5)

    assert_stream([restored_next(str(tmp_path / "at3"))], 3)
    assert_stream([restored_next(str(tmp_path / "at5"))], 5)
    assert_stream([restored_next(str(tmp_path / "at8"))], 8)


class _CountingPipeline:
    """A stand-in for ``Batches`` over batch numbers (no TensorFlow): batch i is {"x": [i]}."""

    def __init__(self, built):
        built.append(self)
        self.position, self.saved = 0, []

    def __next__(self):
        import numpy as np

        self.position += 1
        return {"x": np.array([self.position - 1])}

    def skip(self, count):
        self.position += count
        return self

    def save_state(self, prefix):
        self.saved.append(self.position)

    def close(self):
        pass


@pytest.mark.parametrize("max_bytes", [1 << 20, 16, 0], ids=["all-kept", "two-kept", "none-kept"])
def test_shared_readers_under_a_memory_budget(max_bytes):
    """The budget only changes who builds: readers get batch i as i-th batch whatever is kept, read
    what memory holds, take from the kept pipeline at its position, and build their own (replayed
    to their position) for anything else; a save goes to the pipeline at the reader's position."""
    from harness.train import data

    built = []
    with data.shared_streams(max_bytes=max_bytes):
        def reader():
            return data._stream(("key",), (), lambda: _CountingPipeline(built))

        first = reader()
        assert [int(next(first)["x"][0]) for _ in range(4)] == [0, 1, 2, 3]
        kept = built[0]
        second = reader()
        assert [int(next(second)["x"][0]) for _ in range(6)] == [0, 1, 2, 3, 4, 5]
        second.save_state("p")
        kept_batches = {1 << 20: 6, 16: 2, 0: 0}[max_bytes]          # 8 bytes a batch
        assert len(data._SHARED.recordings[("key",)].batches) == kept_batches
        if max_bytes == 1 << 20:   # all from memory, then the kept pipeline: nothing built
            assert len(built) == 1 and kept.saved == [6]
        else:                      # behind the kept pipeline, past memory: its own, at 2 or 0
            assert len(built) == 2 and built[1].saved == [6] and kept.saved == []
        third = reader().skip(5)
        assert int(next(third)["x"][0]) == 5
    assert data._SHARED is None
