"""Text sources for pretraining: local files, C4 from TFDS, or C4 from the Hugging Face hub.

Every source is a ``seqio.DataSource`` with splits ``train`` and ``validation`` whose examples are
``{"text": tf.string}``, one document each, so the objectives' preprocessors never depend on where
the text came from.

Kinds (``SourceConfig.kind``):

- ``local``: a plain text file, a ``.jsonl`` file, or a directory of ``*.txt`` / ``*.jsonl`` files
  (a single ``.json`` file is read as JSON lines, like C4's released files; compressed files are
  refused). Works offline; this is what the tests and small runs use.
- ``c4-tfds``: the study's corpus (PAPER.md 3.2, ``c4/en:2.2.0``) through TFDS; needs the prepared
  dataset in a TFDS data dir (or network access to ``gs://tfds-data``).
- ``c4-hf``: the ``allenai/c4`` copy on the Hugging Face hub, streamed; needs the network.

Local corpora. A *record* is a non-blank line: in a plain text file the line itself (without its
line end) is one document, as C4 has one document per row; in a ``.jsonl`` file the line is a JSON
object whose ``text_field`` is the document (records whose text is empty or only whitespace are
dropped). A directory's files are read in name order; hidden files are ignored. Records are
numbered 0, 1, 2, ... across the files in that order, and the numbering fixes everything else, so
that neither shuffling nor sharding can change which documents a split or shard holds:

- ``validation`` is every ``VALIDATION_EVERY``-th record, starting with the first (0, 100, 200,
  ...), and ``train`` is all the others, so eval loss can be measured offline on held-out text.
- Shard ``i`` of ``n`` (``seqio.ShardInfo``, one per host) holds the split's records ``i``,
  ``i + n``, ``i + 2n``, ... in that split's own numbering: shards are disjoint, cover the split,
  and differ in size by at most one record, whatever the shuffling seed of each host.
- ``shuffle_files=True`` reads the files in an order drawn from ``seed`` (the same order for the
  same seed; every epoch repeats it); the documents inside a file keep their order, and seqio's
  shuffle buffer mixes them. Shuffling several files counts each file's records once (a fast scan)
  to know where its numbering starts.

The checks happen eagerly, in ``make_data_source``, before TensorFlow builds any graph, and
streams the files (nothing is held in memory): a missing or unreadable path, a directory without
text files, a corpus with fewer than 2 documents, and bad ``.jsonl`` lines raise ``SourceError``.
Corpora up to ``FULL_SCAN_BYTES`` are scanned whole (which also gives seqio
``num_input_examples``); larger ones only in their first ``VALIDATE_LINES`` records per file, and a
bad line further on fails, with the same message, when the pipeline that holds it reads it.

TensorFlow and seqio are imported only by ``make_data_source``: configs can be parsed and checked
without them.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import pathlib
import random
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import seqio
    import tensorflow as tf

KINDS = ("local", "c4-tfds", "c4-hf")
SPLITS = ("train", "validation")
TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl",)
# A single file named *.json is read as JSON lines too: C4's released files (allenai/c4, once
# decompressed) are JSON lines named .json, and reading them as plain text would silently train on
# raw JSON. A real JSON document fails loudly at its first line instead.
SINGLE_FILE_JSONL_SUFFIXES = JSONL_SUFFIXES + (".json",)
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")
VALIDATION_EVERY = 100
# Eager checks per file of a large corpus; and the size up to which a corpus is scanned whole.
VALIDATE_LINES = 1000
FULL_SCAN_BYTES = 32 * 2**20
# The study's C4 (PAPER.md 3.2). TFDS 4.9's c4 builder is at 3.1.0 but still lists 2.2.0 among
# its supported versions, so the study's exact version remains loadable from a prepared data dir.
STUDY_TFDS_NAME = "c4/en:2.2.0"


class SourceError(ValueError):
    """A text source that cannot be read; the message is one line naming the path and the fix."""


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """Where pretraining text comes from.

    Attributes:
      kind: ``"local"``, ``"c4-tfds"`` or ``"c4-hf"`` (module docstring).
      path: local: a text file, a ``.jsonl`` file or a directory of ``*.txt`` / ``*.jsonl`` files
        (required). c4-tfds: an optional TFDS data dir (default: TFDS's, ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``). c4-hf: unused, must be None.
      text_field: the JSONL field that holds a document's text.
      tfds_name: the TFDS dataset, config and version (c4-tfds).
      hf_path: the Hugging Face dataset (c4-hf).
      hf_name: its configuration (c4-hf).
    """

    kind: str
    path: Optional[str] = None
    text_field: str = "text"
    tfds_name: str = STUDY_TFDS_NAME
    hf_path: str = "allenai/c4"
    hf_name: str = "en"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"source kind={self.kind!r}: must be one of {', '.join(KINDS)}")
        if self.kind == "local" and not self.path:
            raise ValueError("source path: a local source needs a path (a text file, a .jsonl "
                             "file or a directory of them)")
        if self.kind == "c4-hf" and self.path is not None:
            raise ValueError(f"source path={self.path!r}: c4-hf streams {self.hf_path!r} from the "
                             "hub and takes no path; use a local source for local files")
        if not self.text_field:
            raise ValueError("source text_field: must be a non-empty JSONL field name")


def parse_source(spec: str, text_field: str = "text") -> SourceConfig:
    """The ``SourceConfig`` named on a command line.

    Args:
      spec: ``"c4"`` or ``"c4-tfds"`` (C4 via TFDS), ``"c4-hf"`` (the Hugging Face copy), or
        anything else: a local path (write ``./c4`` for a local directory named ``c4``).
      text_field: JSONL field of a local source.

    Returns:
      The config (validated).
    """
    if spec in ("c4", "c4-tfds"):
        return SourceConfig(kind="c4-tfds")
    if spec == "c4-hf":
        return SourceConfig(kind="c4-hf")
    return SourceConfig(kind="local", path=spec, text_field=text_field)


# -------------------------------------------------------------------------------------------------
# Local files: listing, reading and checking (plain Python, no TensorFlow).
# -------------------------------------------------------------------------------------------------

def _is_jsonl(path: pathlib.Path) -> bool:
    return path.suffix in SINGLE_FILE_JSONL_SUFFIXES


def corpus_files(path: str) -> list[pathlib.Path]:
    """The files of a local corpus, in reading order.

    Args:
      path: a file (``.jsonl`` or ``.json`` is read as JSON lines, anything else as plain text)
        or a directory (its ``*.txt`` and ``*.jsonl`` files, not recursively, sorted by name,
        hidden ones skipped).

    Returns:
      The files.

    Raises:
      SourceError: the path does not exist, cannot be listed, or the directory has no text files.
    """
    root = pathlib.Path(path).expanduser()
    if not root.exists():
        raise SourceError(f"source {path!r}: no such file or directory; pass a text file, a "
                          ".jsonl file or a directory of them ('c4' or 'c4-hf' for C4)")
    if not root.is_dir():
        if root.suffix in COMPRESSED_SUFFIXES:
            raise SourceError(f"source {path!r}: compressed files are not read; decompress it "
                              "(e.g. `gunzip -k`) and pass the .txt / .jsonl file")
        return [root]
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError as error:
        raise SourceError(f"source {path!r}: cannot list the directory ({error.strerror}); "
                          "check its permissions") from None
    files = [p for p in entries if p.suffix in TEXT_SUFFIXES + JSONL_SUFFIXES
             and not p.name.startswith(".") and p.is_file()]
    if not files:
        raise SourceError(f"source {path!r}: the directory has no *.txt or *.jsonl files; "
                          "put the corpus there, uncompressed, as .txt (one document per line) "
                          "or .jsonl")
    return files


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number",
               float: "a number", bool: "a boolean", type(None): "null"}


def _jsonl_text(path: pathlib.Path, number: int, line: str, text_field: str) -> str:
    """The text of one JSONL record, or a one-line SourceError naming ``path:number``."""
    where = f"{str(path)!r} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise SourceError(f"source {where}: not valid JSON ({error.msg}, column {error.colno}); "
                          "a .jsonl file holds one JSON object per line") from None
    if not isinstance(record, dict):
        raise SourceError(f"source {where}: {_JSON_TYPES.get(type(record), 'a value')} where a "
                          "JSON object was expected; a .jsonl file holds one object per line")
    if text_field not in record:
        keys = ", ".join(repr(k) for k in list(record)[:10]) + (", ..." if len(record) > 10 else "")
        raise SourceError(f"source {where}: no field {text_field!r} (keys: {keys or 'none'}); "
                          "name the field that holds the text with --text-field")
    text = record[text_field]
    if not isinstance(text, str):
        raise SourceError(f"source {where}: field {text_field!r} is "
                          f"{_JSON_TYPES.get(type(text), 'a value')}, not a string; "
                          "name the field that holds the text with --text-field")
    return text


def _open(path: pathlib.Path):
    try:
        return open(path, "rb")
    except OSError as error:
        raise SourceError(f"source {str(path)!r}: cannot read it ({error.strerror}); check the "
                          "path and its permissions") from None


def _raw_records(path: pathlib.Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each record (non-blank line) of one file, streaming, undecoded.

    Binary lines: only "\n" ends a line (text mode would also split at a lone "\r"). Readers
    decide which records they need before paying for decoding and JSON parsing.
    """
    with _open(path) as file:
        for number, raw in enumerate(file, 1):
            if raw.strip():
                yield number, raw


def _record_text(path: pathlib.Path, number: int, raw: bytes, text_field: str) -> str:
    """The text of one record: the line itself, or a JSONL line's ``text_field``."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError(f"source {str(path)!r} line {number}: not UTF-8 text; convert the "
                          "file to UTF-8") from None
    if _is_jsonl(path):
        return _jsonl_text(path, number, line, text_field)
    return line.rstrip("\r\n")


def _records(path: pathlib.Path, text_field: str = "text") -> Iterator[str]:
    """The text of each record of one file, in order, streaming.

    Raises:
      SourceError: the file cannot be opened, a line is not UTF-8, or a JSONL line is bad.
    """
    for number, raw in _raw_records(path):
        yield _record_text(path, number, raw, text_field)


def _count_records(path: pathlib.Path) -> int:
    """Number of records of a file (a scan without decoding)."""
    return sum(1 for _ in _raw_records(path))


def _is_document(text: str) -> bool:
    return bool(text.strip())


def iter_file_documents(path: pathlib.Path, text_field: str = "text") -> Iterator[str]:
    """The documents of one local file (module docstring), in order, streaming.

    Args:
      path: a plain text or ``.jsonl`` file.
      text_field: the JSONL text field.

    Yields:
      Each document's text.

    Raises:
      SourceError: the file cannot be read, or a bad JSONL line.
    """
    return (text for text in _records(path, text_field) if _is_document(text))


def iter_documents(path: str, text_field: str = "text") -> Iterator[str]:
    """Every document of a local corpus (a file or a directory), in reading order.

    Args:
      path: a local corpus (``corpus_files``).
      text_field: the JSONL text field.

    Yields:
      Each document's text; both splits, unsharded.

    Raises:
      SourceError: as ``corpus_files`` and ``iter_file_documents``.
    """
    for file in corpus_files(path):
        yield from iter_file_documents(file, text_field)


def _split_position(record: int) -> tuple[str, int]:
    """(split, index within that split) of a corpus-wide record number."""
    if record % VALIDATION_EVERY == 0:
        return "validation", record // VALIDATION_EVERY
    # Records before this one that are in train: all but the validation ones 0, 100, ...
    return "train", record - record // VALIDATION_EVERY - 1


def _check_local(path: str, files: list[pathlib.Path], text_field: str
                 ) -> Optional[dict[str, int]]:
    """Eager checks (module docstring); the number of documents per split when scanned whole."""
    full = sum(file.stat().st_size for file in files) <= FULL_SCAN_BYTES
    if full:
        counts = dict.fromkeys(SPLITS, 0)
        record = 0
        for file in files:
            for text in _records(file, text_field):
                if _is_document(text):
                    counts[_split_position(record)[0]] += 1
                record += 1
        documents = sum(counts.values())
    else:
        documents = 0
        for file in files:
            for text in itertools.islice(_records(file, text_field), VALIDATE_LINES):
                documents += _is_document(text)
        if documents < 2:  # the checked prefixes were (nearly) empty: look further, stop at two
            documents = sum(1 for _ in itertools.islice(iter_documents(path, text_field), 2))
    _require_documents(path, files, text_field, documents)
    return counts if full else None


def _require_documents(path: str, files: list[pathlib.Path], text_field: str,
                       documents: int) -> None:
    """A local corpus needs at least two documents (one is held out for validation)."""
    if documents == 0:
        what = (f"no non-empty {text_field!r} values" if all(map(_is_jsonl, files))
                else "every line is blank")
        raise SourceError(f"source {path!r}: no documents ({what}); a plain text file holds one "
                          "document per line, a .jsonl file one JSON object per line")
    if documents < 2:
        raise SourceError(f"source {path!r}: only 1 document; a local corpus needs at least 2 "
                          f"(every {VALIDATION_EVERY}th, starting with the first, is held out "
                          "for validation)")


def check_local_corpus(path: str, text_field: str = "text") -> None:
    """Quick checks of a local corpus, in milliseconds and without TensorFlow.

    The path exists and lists, every file opens, and its first two documents can be read (a bad
    ``.jsonl`` line among them is reported). ``make_data_source`` checks the rest later, when the
    pipeline is built; this is what a run checks before it writes or compiles anything.

    Raises:
      SourceError: one line, as ``make_data_source`` would raise it.
    """
    files = corpus_files(path)
    for file in files:
        _open(file).close()
    documents = sum(1 for _ in itertools.islice(iter_documents(path, text_field), 2))
    _require_documents(path, files, text_field, documents)


def _local_generator(files: list[pathlib.Path], text_field: str, split: str, shuffle_files: bool,
                     seed: Optional[int], shard: tuple[int, int],
                     record_counts: Callable[[], list[int]]) -> Callable[[], Iterator[str]]:
    """A generator function over one split and shard of a local corpus (module docstring)."""
    shard_index, num_shards = shard

    def generate() -> Iterator[str]:
        order = list(range(len(files)))
        starts = None
        if shuffle_files and len(files) > 1:
            # random.Random(None) draws a fresh order; a seed fixes it.
            random.Random(seed).shuffle(order)
            starts = [0, *itertools.accumulate(record_counts())]
        record = 0
        for file_index in order:
            path = files[file_index]
            if starts is not None:
                record = starts[file_index]
            for number, raw in _raw_records(path):
                record_split, position = _split_position(record)
                record += 1
                # Decode and parse only this split's and this host's records: with n hosts, each
                # parses 1/n of the JSON (a bad line fails on the host that reads it).
                if record_split == split and position % num_shards == shard_index:
                    text = _record_text(path, number, raw, text_field)
                    if _is_document(text):
                        yield text

    return generate


# -------------------------------------------------------------------------------------------------
# seqio sources.
# -------------------------------------------------------------------------------------------------

@functools.cache
def _source_classes() -> tuple[type, type]:
    """The two seqio subclasses, defined on first use so that this module imports without seqio."""
    import seqio

    class ShardedFunctionDataSource(seqio.FunctionDataSource):
        """A ``FunctionDataSource`` whose ``dataset_fn`` also takes ``shard_info`` and shards.

        seqio 0.0.20's ``FunctionDataSource`` refuses ``shard_info`` (its Task then reads the
        whole stream on every host and keeps every n-th example, which is only disjoint when all
        hosts see one order); here each host reads only its own share.
        """

        @property
        def supports_arbitrary_sharding(self) -> bool:
            return True

        def get_dataset(self, split: str = "train", shuffle: bool = True,
                        seed: Optional[int] = None,
                        shard_info: Optional[seqio.ShardInfo] = None, *,
                        sequence_length=None, use_cached: bool = False,
                        num_epochs: Optional[int] = 1) -> tf.data.Dataset:
            del sequence_length, use_cached, num_epochs  # unused, as in seqio's sources
            return self._dataset_fn(split=split, shuffle_files=shuffle, seed=seed,
                                    shard_info=shard_info)

    class TextTfdsDataSource(seqio.TfdsDataSource):
        """A ``TfdsDataSource`` that keeps only the ``text`` feature (C4 also has url, ...)."""

        def get_dataset(self, split: Optional[str] = None, shuffle: bool = True,
                        seed: Optional[int] = None,
                        shard_info: Optional[seqio.ShardInfo] = None, *,
                        sequence_length=None, use_cached: bool = False,
                        num_epochs: Optional[int] = 1) -> tf.data.Dataset:
            import tensorflow as tf

            dataset = super().get_dataset(split, shuffle, seed, shard_info,
                                          sequence_length=sequence_length,
                                          use_cached=use_cached, num_epochs=num_epochs)
            return dataset.map(lambda example: {"text": example["text"]},
                               num_parallel_calls=tf.data.AUTOTUNE)

    return ShardedFunctionDataSource, TextTfdsDataSource


def _check_request(split: str, shard_info: Any, where: str) -> tuple[int, int]:
    """Validates a split name and ``seqio.ShardInfo``; returns (index, num_shards)."""
    if split not in SPLITS:
        raise SourceError(f"source {where}: split={split!r}; must be one of {', '.join(SPLITS)}")
    if shard_info is None:
        return 0, 1
    index, num_shards = int(shard_info.index), int(shard_info.num_shards)
    if not 0 <= index < num_shards:
        raise SourceError(f"source {where}: shard index {index} of {num_shards}; must be in "
                          f"[0, {num_shards})")
    return index, num_shards


# Documents per call into Python. tf.data pays a fixed cost per generator call (~0.3 ms on this
# 2-core machine, ~3,000 documents/s one at a time); in chunks it reads >100,000 documents/s.
_CHUNK = 256


def _text_dataset(generate: Callable[[], Iterator[str]]) -> "tf.data.Dataset":
    """``{"text": tf.string}`` examples, in order, from a generator function of texts."""
    import tensorflow as tf

    def chunks() -> Iterator[list[str]]:
        chunk: list[str] = []
        for text in generate():
            chunk.append(text)
            if len(chunk) == _CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    dataset = tf.data.Dataset.from_generator(
        chunks, output_signature=tf.TensorSpec(shape=(None,), dtype=tf.string))
    return dataset.unbatch().map(lambda text: {"text": text})


def _make_local(config: SourceConfig) -> "seqio.DataSource":
    files = corpus_files(config.path)
    counts = _check_local(config.path, files, config.text_field)
    record_counts: list[int] = []

    def cached_record_counts() -> list[int]:
        # Only needed to shuffle several files; computed once per source, on first need.
        if not record_counts:
            record_counts.extend(_count_records(file) for file in files)
        return record_counts

    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None,
                   shard_info: Optional[seqio.ShardInfo] = None) -> tf.data.Dataset:
        shard = _check_request(split, shard_info, repr(config.path))
        return _text_dataset(_local_generator(
            files, config.text_field, split, shuffle_files, None if seed is None else int(seed),
            shard, cached_record_counts))

    sharded_source, _ = _source_classes()
    return sharded_source(dataset_fn=dataset_fn, splits=SPLITS, num_input_examples=counts)


def _hf_generator(config: SourceConfig, split: str, shuffle_files: bool, seed: Optional[int],
                  shard: tuple[int, int]) -> Callable[[], Iterator[str]]:
    """A generator function streaming one split and shard of the Hugging Face copy of C4."""
    shard_index, num_shards = shard

    def generate() -> Iterator[str]:
        import datasets  # heavy, and only needed once the stream is read
        import datasets.distributed

        dataset = datasets.load_dataset(config.hf_path, config.hf_name, split=split,
                                        streaming=True)
        if num_shards > 1:
            # Files when the file count divides evenly, else every n-th example; either way
            # disjoint and covering, provided every host shuffles with the same seed.
            dataset = datasets.distributed.split_dataset_by_node(
                dataset, rank=shard_index, world_size=num_shards)
        if shuffle_files:
            dataset = dataset.shuffle(seed=seed)
        for example in dataset:
            yield example["text"]

    return generate


def _make_hf(config: SourceConfig) -> "seqio.DataSource":
    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None,
                   shard_info: Optional[seqio.ShardInfo] = None) -> tf.data.Dataset:
        shard = _check_request(split, shard_info, f"c4-hf {config.hf_path!r}")
        # Hugging Face shuffles the file order before splitting it among hosts: hosts that
        # drew different seeds would overlap, so a sharded stream never goes unseeded.
        if seed is None and shard[1] > 1:
            seed = 0
        return _text_dataset(_hf_generator(config, split, shuffle_files,
                                           None if seed is None else int(seed), shard))

    sharded_source, _ = _source_classes()
    # caching_permitted: a seqio cache of the stream is how multi-epoch runs avoid re-downloading.
    return sharded_source(dataset_fn=dataset_fn, splits=SPLITS)


def _make_tfds(config: SourceConfig) -> "seqio.DataSource":
    data_dir = config.path
    if data_dir and "://" not in data_dir:
        data_dir = str(pathlib.Path(data_dir).expanduser())
        if not os.path.isdir(data_dir):
            raise SourceError(f"source c4-tfds data dir {config.path!r}: no such directory; pass "
                              "the TFDS data dir that holds the prepared c4 (or none for TFDS's "
                              "default)")
    _, tfds_source = _source_classes()
    # seqio's TfdsDataSource loads the builder lazily: nothing is read or downloaded until the
    # first get_dataset (or num_input_examples / list_shards) call.
    return tfds_source(tfds_name=config.tfds_name, tfds_data_dir=data_dir,
                       splits={split: split for split in SPLITS})


def make_data_source(config: SourceConfig) -> "seqio.DataSource":
    """The ``seqio.DataSource`` of ``config``: splits train/validation, ``{"text": tf.string}``.

    All three kinds take ``seqio.ShardInfo`` (from a Task's ``get_dataset(shard_info=...)``) and
    are deterministic given a seed. Nothing is downloaded here: the C4 kinds read or stream on
    first use, which needs their data (TFDS) or the network (both).

    Args:
      config: the source.

    Returns:
      A local or Hugging Face source (a ``seqio.FunctionDataSource`` that shards itself), or a
      ``seqio.TfdsDataSource``.

    Raises:
      SourceError: a local corpus or TFDS data dir that fails the eager checks (module docstring).
    """
    if config.kind == "local":
        return _make_local(config)
    if config.kind == "c4-hf":
        return _make_hf(config)
    return _make_tfds(config)
