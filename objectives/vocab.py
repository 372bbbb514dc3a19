"""Vocabularies: the study's T5 SentencePiece model, a byte vocabulary, or a locally trained one.

The study (PAPER.md, Table 1) uses T5's SentencePiece model
``gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model``: 32,000 pieces, then 100
sentinel ids (``extra_ids``) that seqio appends on top, 32,100 ids in all, padded to 32,128 rows in
the model's embedding so that the vocabulary axis shards evenly.

Every vocabulary built here follows T5's id conventions, which seqio and our feature converters
assume: id 0 is padding, id 1 is end-of-sequence, and the sentinels are the *highest* ids, counting
down (``vocab_size - 1`` is ``<extra_id_0>``, ``vocab_size - 2`` is ``<extra_id_1>``, ...).

Offline use. Google Cloud Storage is unreachable from the machines here (DEPS.md): point
``$ARCHOBJ_T5_SPM`` at a local copy of T5's model, pass the path of any SentencePiece ``.model``
file, or train one on local text with ``train_sentencepiece`` (``archobj vocab train``).

seqio is imported inside the functions that need it, so that training a vocabulary or importing this
module for its constants does not start TensorFlow.
"""

from __future__ import annotations

import io
import os
import pathlib
import random
import re
from typing import TYPE_CHECKING, Iterable, Iterator, Optional, Sequence, Union

import sentencepiece

from objectives import sources

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import seqio

PathLike = Union[str, os.PathLike]

NUM_SENTINELS = 100
T5_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
# Points "t5" at a local copy of T5_SPM_PATH (the only way to use the study's vocabulary offline).
T5_SPM_ENV = "ARCHOBJ_T5_SPM"
# The size of T5_SPM_PATH, known without reading it: 32,000 pieces + 100 sentinels.
T5_VOCAB_SIZE = 32_000 + NUM_SENTINELS
# seqio.ByteVocabulary(extra_ids=100): pad, eos, unk, 256 bytes and the sentinels.
BYTE_VOCAB_SIZE = 3 + 256 + NUM_SENTINELS
# T5's id conventions (see the module docstring); bos is absent (-1).
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
MODEL_TYPES = ("unigram", "bpe", "char", "word")

_TRAIN_HINT = "train one with `archobj vocab train TEXT... --size N --out FILE.model`"


class VocabularyError(ValueError):
    """A vocabulary that cannot be loaded, trained or used; the message is one line."""


def _is_remote(path: str) -> bool:
    """gs://, s3://, http(s):// ...: paths read through tf.io.gfile, i.e. over the network."""
    return "://" in path


def load_vocabulary(spec: str) -> "seqio.Vocabulary":
    """The vocabulary named by ``spec``, always with ``NUM_SENTINELS`` sentinel ids.

    Args:
      spec: ``"byte"`` (UTF-8 bytes, ``seqio.ByteVocabulary``), ``"t5"`` (the study's SentencePiece
        model at ``T5_SPM_PATH``, or at ``$ARCHOBJ_T5_SPM`` when that is set), or the path of a
        SentencePiece ``.model`` file.

    Returns:
      A ``seqio.Vocabulary`` with ``extra_ids == NUM_SENTINELS``.

    Raises:
      VocabularyError: a local model file that is missing, unreadable, not a SentencePiece model,
        or not on T5's ids (pad 0, eos 1). Local files are checked here, eagerly; a remote model
        (``gs://...``, the default for ``"t5"``) is read lazily by seqio on first use, which needs
        the network, and fails there if it is unreachable.
    """
    import seqio

    if spec == "byte":
        # Without extra_ids, seqio's sentinel ids (counted down from vocab_size - 1) would be real
        # bytes: ByteVocabulary() has 259 ids and "<extra_id_0>" would be byte 0xFF.
        return seqio.ByteVocabulary(extra_ids=NUM_SENTINELS)
    if spec == "t5":
        path = os.environ.get(T5_SPM_ENV) or T5_SPM_PATH
        if _is_remote(path):
            return seqio.SentencePieceVocabulary(path, extra_ids=NUM_SENTINELS)
        return _local_sentencepiece(path, origin=f"${T5_SPM_ENV}={path}")
    if _is_remote(spec):
        return seqio.SentencePieceVocabulary(spec, extra_ids=NUM_SENTINELS)
    return _local_sentencepiece(spec, origin=spec)


def _local_sentencepiece(path: str, origin: str) -> "seqio.Vocabulary":
    """Loads a local SentencePiece model once (eager validation), then wraps it for seqio."""
    import seqio

    _read_sentencepiece(path, origin)
    return seqio.SentencePieceVocabulary(str(pathlib.Path(path).expanduser()),
                                         extra_ids=NUM_SENTINELS)


def _read_sentencepiece(path: str, origin: str) -> "sentencepiece.SentencePieceProcessor":
    """A local SentencePiece model, checked: a readable model file on T5's ids (pad 0, eos 1)."""
    file = pathlib.Path(path).expanduser()
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "no such file"
        raise VocabularyError(
            f"vocabulary {origin!r}: {what}; use 'byte', 't5' or a SentencePiece .model file "
            f"({_TRAIN_HINT})")
    try:
        proto = file.read_bytes()
    except OSError as error:
        raise VocabularyError(f"vocabulary {str(file)!r}: cannot read it ({error.strerror}); "
                              "check its permissions") from None
    if not proto:
        raise VocabularyError(f"vocabulary {str(file)!r}: the file is empty; {_TRAIN_HINT}")
    try:
        processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    except (RuntimeError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise VocabularyError(f"vocabulary {str(file)!r}: not a SentencePiece model ({reason}); "
                              f"{_TRAIN_HINT}") from None
    # seqio hard-codes padding as id 0 and our converters assume EOS 1: a model trained with
    # SentencePiece's defaults (unk 0, bos 1, eos 2) would silently turn every <unk> into padding.
    if processor.pad_id() != PAD_ID or processor.eos_id() != EOS_ID:
        raise VocabularyError(
            f"vocabulary {str(file)!r}: pad id {processor.pad_id()}, eos id {processor.eos_id()}; "
            f"archobj needs T5's ids (pad {PAD_ID}, eos {EOS_ID}): {_TRAIN_HINT}")
    return processor


def vocabulary_ids(spec: str) -> Optional[int]:
    """How many ids ``load_vocabulary(spec)`` has, sentinels included, checked without TensorFlow.

    A local model file is read and checked as ``load_vocabulary`` checks it (missing, unreadable,
    empty, not SentencePiece, not on T5's ids), so a run can fail on a bad vocabulary in
    milliseconds, before anything is compiled or written. A remote model (the default ``"t5"``) is
    not fetched: its size is known (``T5_VOCAB_SIZE``) or, for any other remote path, unknown
    until seqio first reads it.

    Returns:
      The number of ids (359 for ``"byte"``, 32,100 for ``"t5"``); None for a remote model other
      than T5's.

    Raises:
      VocabularyError: as ``load_vocabulary``; one line.
    """
    if spec == "byte":
        return BYTE_VOCAB_SIZE
    if spec == "t5":
        path = os.environ.get(T5_SPM_ENV) or T5_SPM_PATH
        if _is_remote(path):
            return T5_VOCAB_SIZE
        return _read_sentencepiece(path, f"${T5_SPM_ENV}={path}").get_piece_size() + NUM_SENTINELS
    if _is_remote(spec):
        return None
    return _read_sentencepiece(spec, spec).get_piece_size() + NUM_SENTINELS


def vocabulary_name(vocab: "seqio.Vocabulary") -> str:
    """A short human name for error messages: ``byte``, the model path, or the class name."""
    path = getattr(vocab, "sentencepiece_model_file", None)
    if path:
        return str(path)
    if type(vocab).__name__ == "ByteVocabulary":
        return "byte"
    return type(vocab).__name__


def model_vocab_size(vocab: "seqio.Vocabulary", multiple: int = 128) -> int:
    """Rows of the model's embedding: ``vocab.vocab_size`` rounded up to a multiple of ``multiple``.

    The study pads T5's 32,100 ids to 32,128 (PAPER.md, Table 1): ids past ``vocab_size`` are never
    produced by the data and only make the vocabulary axis divide evenly across devices.

    The study's ``gs://`` model is not downloaded for this: its size is known (``T5_VOCAB_SIZE``).

    Args:
      vocab: the vocabulary.
      multiple: the rounding unit.

    Returns:
      The padded size, e.g. 32,128 for T5's 32,100 ids and 384 for the byte vocabulary's 359.

    Raises:
      ValueError: ``multiple`` is not positive.
    """
    if multiple < 1:
        raise ValueError(f"multiple={multiple}: must be >= 1")
    if (getattr(vocab, "sentencepiece_model_file", None) == T5_SPM_PATH
            and getattr(vocab, "extra_ids", None) == NUM_SENTINELS):
        size = T5_VOCAB_SIZE
    else:
        size = vocab.vocab_size
    return -(-size // multiple) * multiple


def require_sentinels(vocab: "seqio.Vocabulary", needed: int = 1,
                      what: str = "span corruption (MLM)") -> None:
    """Checks that ``vocab`` has at least ``needed`` sentinel ids for ``what``.

    seqio and t5.data take sentinels counting down from ``vocab_size - 1`` whether or not the
    vocabulary reserved ids for them: without ``extra_ids`` they are real tokens (for
    ``seqio.ByteVocabulary()``, byte 0xFF) and span corruption silently trains on garbage.
    ``load_vocabulary`` always adds ``NUM_SENTINELS``.

    Args:
      vocab: the vocabulary.
      needed: how many distinct sentinels the objective can emit per example.
      what: the objective, for the message.

    Raises:
      VocabularyError: ``vocab.extra_ids < needed``, naming the vocabulary and ``what``.
    """
    extra_ids = getattr(vocab, "extra_ids", 0) or 0
    if extra_ids < needed:
        raise VocabularyError(
            f"{what} needs {needed} sentinel id(s) but vocabulary {vocabulary_name(vocab)!r} has "
            f"extra_ids={extra_ids}; build it with load_vocabulary(), which adds {NUM_SENTINELS}")


# -------------------------------------------------------------------------------------------------
# Training a SentencePiece model on local text.
# -------------------------------------------------------------------------------------------------

def _training_sentences(text_files: Iterable[PathLike], text_field: str) -> Iterator[str]:
    """Every non-blank line of every document, in input order (directories in name order)."""
    for path in text_files:
        for file in sources.corpus_files(str(path)):
            for document in sources.iter_file_documents(file, text_field):
                # SentencePiece trains on "sentences"; C4 documents are paragraphs joined by
                # newlines, and one long document would exceed its max_sentence_length (4,192
                # bytes) and be dropped whole.
                for line in document.splitlines():
                    if line.strip():
                        yield line


def _sample(sentences: Iterator[str], limit: int, seed: int = 0) -> list[str]:
    """A uniform sample of at most ``limit`` sentences (reservoir sampling; fixed seed)."""
    rng = random.Random(seed)
    sample: list[str] = []
    for seen, sentence in enumerate(sentences):
        if seen < limit:
            sample.append(sentence)
        else:
            slot = rng.randrange(seen + 1)
            if slot < limit:
                sample[slot] = sentence
    return sample


def train_sentencepiece(text_files: Union[PathLike, Sequence[PathLike]], vocab_size: int,
                        out: PathLike, *, model_type: str = "unigram",
                        character_coverage: float = 1.0, max_sentences: int = 1_000_000,
                        num_threads: int = 1, text_field: str = "text") -> pathlib.Path:
    """Trains a SentencePiece model on local text with T5's ids, for ``load_vocabulary(out)``.

    The model has ``vocab_size`` pieces: pad 0 (``<pad>``), eos 1 (``</s>``), unk 2 (``<unk>``), no
    bos, then the learned pieces. seqio's ``SentencePieceVocabulary`` adds ``NUM_SENTINELS``
    sentinel ids after them, so the vocabulary has ``vocab_size + 100`` ids.

    The text is read as the local sources read it (``objectives.sources``): a plain text file is
    one document per non-blank line, a ``.jsonl`` file one document per line (its ``text_field``
    field), a directory its ``*.txt`` and ``*.jsonl`` files. Each non-blank line of a document is
    one training sentence; lines over SentencePiece's ``max_sentence_length`` (4,192 bytes) are
    skipped by SentencePiece. Past ``max_sentences`` sentences, a uniform sample of that many is
    used (reservoir sampling, fixed seed).

    The result is deterministic: the same inputs and arguments give a byte-identical ``.model``.
    SentencePiece's result depends on the thread count, so ``num_threads`` is part of the
    inputs (1 by default; more is faster on a large corpus).

    Args:
      text_files: text files, ``.jsonl`` files or directories (one path or a sequence of them).
      vocab_size: number of pieces, before the sentinels (T5: 32,000).
      out: the ``.model`` path to write; its ``.vocab`` (piece and score per line) is written
        beside it. Existing files are replaced only once training has succeeded.
      model_type: SentencePiece's model type: unigram (T5's), bpe, char or word.
      character_coverage: fraction of characters covered by the model (1.0 keeps every character
        that appears; SentencePiece suggests 0.9995 for languages with large character sets).
      max_sentences: most sentences to train on.
      num_threads: SentencePiece trainer threads.
      text_field: the field of ``.jsonl`` records that holds the text.

    Returns:
      The path of the written ``.model`` file.

    Raises:
      VocabularyError: bad arguments, no text in the inputs, or a ``vocab_size`` too large for the
        corpus (or anything else SentencePiece rejects), as one line.
      objectives.sources.SourceError: a missing or unreadable input, or a bad ``.jsonl`` line.
    """
    out_path = pathlib.Path(out).expanduser()
    if out_path.suffix != ".model":
        raise VocabularyError(f"--out {str(out_path)!r}: must end with .model")
    if vocab_size < 4:
        raise VocabularyError(f"--size {vocab_size}: must be >= 4 (pad, eos, unk and one piece)")
    if model_type not in MODEL_TYPES:
        raise VocabularyError(f"model_type={model_type!r}: must be one of {', '.join(MODEL_TYPES)}")
    if not 0.0 < character_coverage <= 1.0:
        raise VocabularyError(f"character_coverage={character_coverage}: must be in (0, 1]")
    if max_sentences < 1 or num_threads < 1:
        raise VocabularyError(f"max_sentences={max_sentences}, num_threads={num_threads}: "
                              "both must be >= 1")
    inputs = [text_files] if isinstance(text_files, (str, os.PathLike)) else list(text_files)
    if not inputs:
        raise VocabularyError("no input text files given")
    named = ", ".join(repr(str(p)) for p in inputs)
    sentences = _sample(_training_sentences(inputs, text_field), max_sentences)
    if not sentences:
        raise VocabularyError(f"no text in {named}: every line is blank")

    # model_writer instead of model_prefix: the output path would otherwise be recorded inside the
    # model (trainer_spec.model_prefix), and the same corpus would give different bytes per path.
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
            pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
            num_threads=num_threads, minloglevel=2)
    except RuntimeError as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        too_high = re.search(r"Vocabulary size too high.*<= *(\d+)", message)
        if too_high:
            raise VocabularyError(
                f"--size {vocab_size} is too large for {named} ({len(sentences)} sentences "
                f"allow at most {too_high.group(1)} pieces): lower --size or add text") from None
        raise VocabularyError(f"SentencePiece could not train on {named}: "
                              f"{re.sub(r'^INTERNAL: (src/[^ ]+ )?', '', message)}") from None

    proto = model.getvalue()
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    vocab_text = "".join(f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n"
                         for i in range(processor.get_piece_size()))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(out_path, proto)
    _write_atomically(out_path.with_suffix(".vocab"), vocab_text.encode("utf-8"))
    return out_path


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Writes beside ``path`` then renames, so a crash never leaves half a model behind."""
    temporary = path.with_name(f".{path.name}.partial")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
