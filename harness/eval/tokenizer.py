"""TensorFlow-free tokenizers for archobj's vocabularies (evaluation; PAPER.md 3.1, 3.2).

Training tokenizes through seqio (``objectives/vocab.py``), which imports TensorFlow. Evaluation
only needs ``text -> ids -> text`` and must run on machines without TensorFlow (DEPS.md: the GPU
machines have none), so this module gives the same ids with the ``sentencepiece`` package alone:

  ``byte``   UTF-8 bytes, id = byte + 3 (pad 0, eos 1, unk 2), then 100 sentinel ids: exactly
             ``seqio.ByteVocabulary(extra_ids=100)``.
  ``t5``     the study's SentencePiece model, read from ``$ARCHOBJ_T5_SPM`` (``gs://`` is
             unreachable here, and reading it would need TensorFlow's file system).
  a path     any local SentencePiece ``.model`` on T5's ids (pad 0, eos 1).

SentencePiece vocabularies get the 100 sentinel pieces ``▁<extra_id_N>`` appended as seqio appends
them (user-defined pieces, highest id = ``<extra_id_0>``), so ids equal seqio's
``SentencePieceVocabulary(path, extra_ids=100)`` for any text, sentinels included.

Neither ``encode`` nor ``decode`` adds or needs EOS: the study's evaluation tokenized contexts and
continuations with ``add_eos=False`` (AO ``t5x/eval_harness.py``).
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterable, Sequence

import sentencepiece
from sentencepiece import sentencepiece_model_pb2

from objectives.vocab import (EOS_ID, NUM_SENTINELS, PAD_ID, T5_SPM_ENV, UNK_ID,
                              VocabularyError)

# seqio.ByteVocabulary: 3 special ids (pad, eos, unk) before the 256 bytes.
_BYTE_OFFSET = 3
_BYTE_COUNT = 256


class Tokenizer:
    """The interface: ``encode``, ``decode``, ``vocab_size``, ``eos_id``, ``pad_id``, ``name``."""

    name: str = ""
    pad_id: int = PAD_ID
    eos_id: int = EOS_ID
    unk_id: int = UNK_ID

    @property
    def vocab_size(self) -> int:
        """Number of ids, sentinels included (the model's embedding needs at least this many)."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without EOS."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` up to the first EOS; padding and ids past the vocabulary are dropped."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes with seqio's ``ByteVocabulary(extra_ids=100)`` ids."""

    name = "byte"

    @property
    def vocab_size(self) -> int:
        return _BYTE_OFFSET + _BYTE_COUNT + NUM_SENTINELS

    def encode(self, text: str) -> list[int]:
        return [b + _BYTE_OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: Iterable[int]) -> str:
        data = bytearray()
        for i in _until_eos(ids, self.eos_id):
            # Special ids and sentinels have no bytes (seqio filters them the same way).
            if _BYTE_OFFSET <= i < _BYTE_OFFSET + _BYTE_COUNT:
                data.append(i - _BYTE_OFFSET)
        return data.decode("utf-8", errors="ignore")


class SentencePieceTokenizer(Tokenizer):
    """A local SentencePiece model plus seqio's 100 sentinel pieces."""

    def __init__(self, path: str, origin: str) -> None:
        file = pathlib.Path(path).expanduser()
        self.name = str(file)
        if not file.is_file():
            what = "is a directory" if file.is_dir() else "no such file"
            raise VocabularyError(f"vocabulary {origin!r}: {what}; use 'byte', 't5' (with "
                                  f"${T5_SPM_ENV} set) or the path of a SentencePiece .model file")
        try:
            model = sentencepiece_model_pb2.ModelProto.FromString(file.read_bytes())
        except OSError as error:
            raise VocabularyError(f"vocabulary {str(file)!r}: cannot read it ({error.strerror}); "
                                  "check its permissions") from None
        except Exception as error:  # protobuf's DecodeError and friends
            raise VocabularyError(f"vocabulary {str(file)!r}: not a SentencePiece model "
                                  f"({type(error).__name__}); pass a .model file") from None
        # The same edit seqio makes (vocabularies._load_model_internal): sentinels as user-defined
        # pieces, in reverse, so that "<extra_id_0>" has the highest id.
        for i in reversed(range(NUM_SENTINELS)):
            model.pieces.add(piece=f"▁<extra_id_{i}>", score=0.0,
                             type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED)
        processor = sentencepiece.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(model.SerializeToString())
        except (RuntimeError, OSError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise VocabularyError(f"vocabulary {str(file)!r}: not a SentencePiece model "
                                  f"({reason}); pass a .model file") from None
        if processor.pad_id() != PAD_ID or processor.eos_id() != EOS_ID:
            raise VocabularyError(
                f"vocabulary {str(file)!r}: pad id {processor.pad_id()}, eos id "
                f"{processor.eos_id()}; archobj needs T5's ids (pad {PAD_ID}, eos {EOS_ID}): train "
                "one with `archobj vocab train`")
        self._processor = processor
        self.unk_id = processor.unk_id()

    @property
    def vocab_size(self) -> int:
        return self._processor.GetPieceSize()

    @property
    def processor(self) -> sentencepiece.SentencePieceProcessor:
        """The underlying ``SentencePieceProcessor`` (sentinel pieces included)."""
        return self._processor

    def encode(self, text: str) -> list[int]:
        return list(self._processor.EncodeAsIds(text))

    def decode(self, ids: Iterable[int]) -> str:
        size = self.vocab_size
        kept = [int(i) for i in _until_eos(ids, self.eos_id) if 0 < int(i) < size]
        return self._processor.DecodeIds(kept)


def load_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer for an archobj vocabulary spec (the values of ``data.vocabulary``).

    Args:
      spec: ``"byte"``, ``"t5"`` (reads ``$ARCHOBJ_T5_SPM``) or the path of a local SentencePiece
        ``.model`` file.

    Returns:
      A ``Tokenizer`` whose ids equal seqio's vocabulary of the same spec.

    Raises:
      VocabularyError: an unset ``$ARCHOBJ_T5_SPM`` for ``"t5"``, a remote path, a missing or
        invalid model file, or a model not on T5's ids; one line each.
    """
    if not isinstance(spec, str) or not spec:
        raise VocabularyError(f"vocabulary {spec!r}: use 'byte', 't5' or the path of a "
                              "SentencePiece .model file")
    if spec == "byte":
        return ByteTokenizer()
    if spec == "t5":
        path = os.environ.get(T5_SPM_ENV)
        if not path:
            raise VocabularyError(
                f"vocabulary 't5' needs a local copy of T5's SentencePiece model: set "
                f"${T5_SPM_ENV}=/path/to/sentencepiece.model")
        return _sentencepiece(path, origin=f"${T5_SPM_ENV}={path}")
    return _sentencepiece(spec, origin=spec)


def _sentencepiece(path: str, origin: str) -> SentencePieceTokenizer:
    if "://" in path:
        raise VocabularyError(f"vocabulary {origin!r}: remote models cannot be read for "
                              "evaluation; copy it locally and pass the local path")
    return SentencePieceTokenizer(path, origin)


def _until_eos(ids: Iterable[int], eos_id: int) -> Sequence[int]:
    out = []
    for i in ids:
        i = int(i)
        if i == eos_id:
            break
        out.append(i)
    return out
