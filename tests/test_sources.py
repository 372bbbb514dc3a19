"""Text sources: local files read exactly as Python reads them, a held-out validation split,
seeded file shuffling, per-host shards that are disjoint and cover the corpus, one-line errors for
bad corpora, and the C4 loaders (Hugging Face on monkeypatched local data, TFDS on mock data)
without any network."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import seqio

from objectives import sources
from objectives.sources import SourceConfig, SourceError, make_data_source, parse_source

from helpers import assert_one_line_error

WORDS = "a long document about language models that learn to predict the next word".split()


def _documents(rng: np.random.Generator, n: int, tag: str) -> list[str]:
    return [f"{tag}{i} " + " ".join(rng.choice(WORDS, size=rng.integers(1, 8))) for i in range(n)]


def _texts(dataset) -> list[str]:
    # Batched: one Python round trip per 1,024 documents keeps each test well under a second.
    return [text.decode("utf-8") for batch in dataset.batch(1024).as_numpy_iterator()
            for text in batch["text"]]


def _split(source, split: str = "train", **kwargs) -> list[str]:
    return _texts(source.get_dataset(split, shuffle=kwargs.pop("shuffle", False), **kwargs))


def _read_text(path: pathlib.Path) -> list[str]:
    """What the source should yield for a plain text file: its non-blank lines."""
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def _read_jsonl(path: pathlib.Path, field: str) -> list[str]:
    records = [json.loads(line) for line in path.read_text().split("\n") if line.strip()]
    return [record[field] for record in records]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
    """A directory: three .txt files (blank lines between some documents), one .jsonl, and files
    that must be ignored (a hidden .txt, a README.md)."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("corpus")
    for name, n in (("b.txt", 130), ("a.txt", 90), ("c.txt", 70)):
        docs = _documents(rng, n, name[0])
        root.joinpath(name).write_text("".join(d + ("\n\n" if i % 7 == 0 else "\n")
                                               for i, d in enumerate(docs)))
    root.joinpath("d.jsonl").write_text("".join(json.dumps({"text": d, "url": f"u{i}"}) + "\n"
                                                for i, d in enumerate(_documents(rng, 40, "d"))))
    root.joinpath(".hidden.txt").write_text("never read\n")
    root.joinpath("README.md").write_text("never read\n")
    return root


def _corpus_documents(root: pathlib.Path) -> list[str]:
    return (_read_text(root / "a.txt") + _read_text(root / "b.txt") + _read_text(root / "c.txt")
            + _read_jsonl(root / "d.jsonl", "text"))


def test_text_file_is_one_document_per_line_with_every_100th_held_out(corpus):
    path = corpus / "b.txt"
    expected = _read_text(path)
    source = make_data_source(parse_source(str(path)))
    train, validation = _split(source, "train"), _split(source, "validation")
    assert validation == expected[::100]
    assert train == [d for i, d in enumerate(expected) if i % 100]
    assert source.num_input_examples("train") == len(train) == 128
    assert source.num_input_examples("validation") == len(validation) == 2


def test_directory_reads_txt_and_jsonl_files_in_name_order(corpus):
    expected = _corpus_documents(corpus)
    assert list(sources.iter_documents(str(corpus))) == expected
    source = make_data_source(parse_source(str(corpus)))
    train, validation = _split(source, "train"), _split(source, "validation")
    assert validation == expected[::100] and len(validation) == 4
    assert train == [d for i, d in enumerate(expected) if i % 100]  # disjoint, covering


def test_jsonl_with_a_custom_text_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    rng = np.random.default_rng(1)
    lines = [json.dumps({"id": i, "body": d}) for i, d in enumerate(_documents(rng, 150, "j"))]
    lines[5] = json.dumps({"id": 5, "body": "   "})  # an empty document: dropped
    path.write_text("\n".join(lines[:70]) + "\n\n" + "\n".join(lines[70:]))  # no final newline
    expected = _read_jsonl(path, "body")
    source = make_data_source(parse_source(str(path), text_field="body"))
    documents = _split(source, "validation") + _split(source, "train")
    assert sorted(documents) == sorted(d for d in expected if d.strip())
    assert _split(source, "validation") == [expected[0], expected[100]]
    # C4's released files are JSON lines named .json: a single .json file is read the same way.
    as_json = tmp_path / "c4-train.00000-of-01024.json"
    as_json.write_bytes(path.read_bytes())
    assert _split(make_data_source(parse_source(str(as_json), text_field="body"))) == _split(
        source)


def test_shuffled_file_order_is_fixed_by_the_seed(corpus):
    source = make_data_source(parse_source(str(corpus)))
    first = _split(source, shuffle=True, seed=3)
    assert first == _split(source, shuffle=True, seed=3)
    other = _split(source, shuffle=True, seed=4)
    assert first != other and first != _split(source)
    assert sorted(first) == sorted(other) == sorted(_split(source))
    # Shuffling reorders files, never what is held out.
    assert sorted(_split(source, "validation", shuffle=True, seed=4)) == sorted(
        _split(source, "validation"))


@pytest.mark.parametrize("num_shards", [2, 3])
@pytest.mark.parametrize("split", ["train", "validation"])
def test_shards_are_disjoint_and_cover_the_split(corpus, num_shards, split):
    source = make_data_source(parse_source(str(corpus)))
    whole = _split(source, split)
    # Each host shuffles with its own seed: shards still depend only on the record numbering.
    shards = [_split(source, split, shuffle=True, seed=10 + i,
                     shard_info=seqio.ShardInfo(i, num_shards)) for i in range(num_shards)]
    assert sorted(sum(shards, [])) == sorted(whole)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_seqio_task_hands_shard_info_to_the_source(corpus):
    source = make_data_source(parse_source(str(corpus)))
    task = seqio.Task("archobj_test_sources_sharding", source=source, output_features={},
                      preprocessors=[])
    shards = [_texts(task.get_dataset(None, split="train", shuffle=False,
                                      shard_info=seqio.ShardInfo(i, 3))) for i in range(3)]
    assert shards == [_split(source, shard_info=seqio.ShardInfo(i, 3)) for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(_split(source))


def _bad_jsonl(tmp_path, line: str) -> pathlib.Path:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + line + "\n" + json.dumps({"text": "x"}))
    return path


@pytest.mark.parametrize("case", [
    "missing", "no_text_files", "blank", "one_document", "not_json", "not_object", "no_field",
    "not_string", "not_utf8", "compressed", "unreadable"])
def test_bad_local_corpora_raise_one_line_naming_the_path(tmp_path, monkeypatch, case):
    needles: tuple[str, ...]
    if case == "missing":
        path, needles = tmp_path / "absent.txt", ("no such file",)
    elif case == "no_text_files":
        path, needles = tmp_path, ("no *.txt or *.jsonl files",)
        (tmp_path / "notes.md").write_text("x\n")
    elif case == "blank":
        path, needles = tmp_path / "blank.txt", ("no documents", "blank")
        path.write_text("\n   \n\t\n")
    elif case == "one_document":
        path, needles = tmp_path / "one.txt", ("only 1 document", "at least 2")
        path.write_text("\nalone\n\n")
    elif case == "not_json":
        path, needles = _bad_jsonl(tmp_path, "{'text': 1}"), ("line 2", "not valid JSON")
    elif case == "not_object":
        path, needles = _bad_jsonl(tmp_path, '["text"]'), ("line 2", "an array", "JSON object")
    elif case == "no_field":
        path = _bad_jsonl(tmp_path, json.dumps({"content": "x", "url": "u"}))
        needles = ("line 2", "no field 'text'", "'content', 'url'", "--text-field")
    elif case == "not_string":
        path = _bad_jsonl(tmp_path, json.dumps({"text": 3}))
        needles = ("line 2", "'text' is a number, not a string")
    elif case == "not_utf8":
        path, needles = tmp_path / "latin1.txt", ("line 2", "not UTF-8")
        path.write_bytes(b"fine\ncaf\xe9\nok\n")
    elif case == "compressed":
        path, needles = tmp_path / "c4.json.gz", ("compressed", "decompress")
        path.write_bytes(b"\x1f\x8b")
    else:  # unreadable: chmod does not stop root, so the open itself is made to fail
        path, needles = tmp_path / "locked.txt", ("cannot read", "Permission denied",
                                                  "permissions")
        path.write_text("a\nb\n")

        def refuse(file, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(file))
        monkeypatch.setattr(sources, "open", refuse, raising=False)
    with pytest.raises(SourceError) as excinfo:
        make_data_source(parse_source(str(path)))
    assert isinstance(excinfo.value, ValueError)
    assert_one_line_error(excinfo, str(path), *needles)


def test_large_corpora_check_only_a_prefix_eagerly(tmp_path, monkeypatch):
    """Past FULL_SCAN_BYTES only VALIDATE_LINES records per file are checked before the pipeline
    runs; a bad line further on fails when read, with the same message."""
    monkeypatch.setattr(sources, "FULL_SCAN_BYTES", 0)
    monkeypatch.setattr(sources, "VALIDATE_LINES", 5)
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(8))
                    + "{broken\n")
    source = make_data_source(parse_source(str(path)))
    assert source.num_input_examples("train") is None  # not counted: it would mean a full scan
    with pytest.raises(Exception, match="line 9: not valid JSON"):
        _split(source)


def test_source_config_validation_and_parsing():
    assert parse_source("c4") == parse_source("c4-tfds") == SourceConfig(kind="c4-tfds")
    assert parse_source("c4").tfds_name == "c4/en:2.2.0"  # the study's version (PAPER.md 3.2)
    assert parse_source("c4-hf") == SourceConfig(kind="c4-hf", hf_path="allenai/c4", hf_name="en")
    assert parse_source("./c4", text_field="body") == SourceConfig("local", "./c4", "body")
    with pytest.raises(ValueError, match="kind='web'.*local, c4-tfds, c4-hf"):
        SourceConfig(kind="web")
    with pytest.raises(ValueError, match="local source needs a path"):
        parse_source("")
    with pytest.raises(ValueError, match="c4-hf .* takes no path"):
        SourceConfig(kind="c4-hf", path="/data")
    source = make_data_source(parse_source(str(pathlib.Path(__file__))))
    with pytest.raises(SourceError, match="split='test'"):
        source.get_dataset("test")
    with pytest.raises(SourceError, match="shard index 2 of 2"):
        source.get_dataset("train", shard_info=seqio.ShardInfo(2, 2))


def test_c4_hf_adapter_streams_the_text_field_lazily_and_shards(monkeypatch):
    import datasets

    rng = np.random.default_rng(2)
    corpus = {split: _documents(rng, n, split[0]) for split, n in (("train", 60),
                                                                   ("validation", 9))}
    calls = []

    def fake_load_dataset(path, name=None, *, split, streaming=False, **kwargs):
        calls.append((path, name, split, streaming))
        table = datasets.Dataset.from_dict({"text": corpus[split],
                                            "timestamp": ["2019-04-25"] * len(corpus[split])})
        return table.to_iterable_dataset(num_shards=4)  # a streaming dataset of 4 "files"

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = make_data_source(parse_source("c4-hf"))
    dataset = source.get_dataset("train", shuffle=False)
    assert calls == []  # nothing is loaded before the stream is read
    assert _texts(dataset) == corpus["train"]
    assert calls == [("allenai/c4", "en", "train", True)]
    assert _split(source, "validation") == corpus["validation"]
    assert dataset.element_spec.keys() == {"text"}
    shuffled = _split(source, shuffle=True, seed=5)
    assert shuffled == _split(source, shuffle=True, seed=5) != corpus["train"]
    assert sorted(shuffled) == sorted(corpus["train"])
    for num_shards in (2, 3):  # by files (4 = 2 x 2) and by examples (3 does not divide 4)
        shards = [_split(source, shuffle=True, seed=7, shard_info=seqio.ShardInfo(i, num_shards))
                  for i in range(num_shards)]
        assert sorted(sum(shards, [])) == sorted(corpus["train"])


def test_c4_tfds_source_is_lazy_and_yields_only_text(monkeypatch, tmp_path):
    import tensorflow_datasets as tfds

    def no_builder(*args, **kwargs):
        raise AssertionError("the TFDS builder was touched at construction")

    with monkeypatch.context() as patch:
        patch.setattr(tfds, "builder", no_builder)
        source = make_data_source(SourceConfig(kind="c4-tfds", path=str(tmp_path)))
        assert isinstance(source, seqio.TfdsDataSource)
        assert tuple(source.splits) == sources.SPLITS
    with pytest.raises(SourceError) as excinfo:
        make_data_source(SourceConfig(kind="c4-tfds", path=str(tmp_path / "absent")))
    assert_one_line_error(excinfo, str(tmp_path / "absent"), "no such directory")
    # tfds.testing.mock_data fakes the reads from the c4 builder's own feature spec, offline.
    source = make_data_source(parse_source("c4"))
    with tfds.testing.mock_data(num_examples=6):
        for split in sources.SPLITS:
            dataset = source.get_dataset(split, shuffle=False)
            assert dataset.element_spec.keys() == {"text"}
            assert len(_texts(dataset)) == 6
