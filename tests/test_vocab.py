"""Vocabularies: the byte vocabulary's sentinels, a locally trained SentencePiece model on T5's ids,
the model's padded vocabulary size, and one-line errors for every bad input. Offline throughout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import seqio

from objectives import sources, vocab
from objectives.vocab import (NUM_SENTINELS, T5_SPM_PATH, VocabularyError, load_vocabulary,
                              model_vocab_size, require_sentinels, train_sentencepiece)

from helpers import assert_one_line_error

SIZE = 200  # pieces of the test model, before the sentinels
SYLLABLES = ("ka", "to", "ri", "mu", "se", "lan", "gor", "pi", "ven", "da", "qu", "ex", "zo",
             "bel", "tra", "nis", "the", "and", "of")


def _corpus_lines(seed: int = 0, n: int = 300) -> list[str]:
    """Pseudo-words from a few syllables: enough distinct substrings for a 200-piece model."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(SYLLABLES, size=rng.integers(1, 5))) for _ in range(400)]
    return [" ".join(rng.choice(words, size=rng.integers(5, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n".join(_corpus_lines()) + "\n")
    return path


@pytest.fixture(scope="module")
def model_path(text_file, tmp_path_factory):
    return train_sentencepiece([text_file], SIZE, tmp_path_factory.mktemp("spm") / "tiny.model")


def test_byte_vocabulary_sentinels_do_not_collide_with_bytes():
    byte = load_vocabulary("byte")
    assert byte.extra_ids == NUM_SENTINELS
    assert byte.vocab_size == 3 + 256 + NUM_SENTINELS
    # Text whose UTF-8 bytes span 0x00-0xFF (U+0080..U+FFFF cover the lead and continuation bytes).
    text = "".join(map(chr, range(1, 0x800, 7))) + "\uffff\U0001f600"
    byte_ids = byte.encode(text)
    sentinels = range(byte.vocab_size - NUM_SENTINELS, byte.vocab_size)
    assert min(sentinels) == 3 + 256 and max(byte_ids) < min(sentinels)
    assert byte.decode(byte_ids) == text
    require_sentinels(byte, needed=NUM_SENTINELS)
    # The seqio trap this module guards against: without extra_ids, "<extra_id_0>" is byte 0xFF.
    bare = seqio.ByteVocabulary()
    assert bare.vocab_size - 1 == 255 + 3
    with pytest.raises(VocabularyError) as excinfo:
        require_sentinels(bare)
    assert_one_line_error(excinfo, "'byte'", "span corruption (MLM)", "extra_ids=0")


def test_trained_model_has_t5_ids_and_sentinels_on_top(model_path):
    assert model_path.suffix == ".model" and model_path.with_suffix(".vocab").is_file()
    assert len(model_path.with_suffix(".vocab").read_text().splitlines()) == SIZE
    spm = load_vocabulary(str(model_path))
    assert isinstance(spm, seqio.SentencePieceVocabulary)
    assert (spm.pad_id, spm.eos_id, spm.unk_id) == (0, 1, 2)
    assert spm.tokenizer.bos_id() == -1
    assert spm.tokenizer.id_to_piece(0) == "<pad>" and spm.tokenizer.id_to_piece(1) == "</s>"
    assert spm.extra_ids == NUM_SENTINELS and spm.vocab_size == SIZE + NUM_SENTINELS
    sentence = "kato rimu sebel tranis the qu"
    ids = spm.encode(sentence)
    assert ids and max(ids) < SIZE and 0 not in ids and 1 not in ids
    assert spm.decode(ids) == sentence
    # seqio's convention: sentinels count down from the top id.
    assert spm.decode([spm.vocab_size - 1]) == "<extra_id_0>"
    assert spm.decode([spm.vocab_size - NUM_SENTINELS]) == f"<extra_id_{NUM_SENTINELS - 1}>"
    assert "extra_id" not in spm.decode([spm.vocab_size - NUM_SENTINELS - 1])
    require_sentinels(spm, needed=NUM_SENTINELS)
    with pytest.raises(VocabularyError) as excinfo:
        require_sentinels(spm, needed=NUM_SENTINELS + 1, what="a greedy objective")
    assert_one_line_error(excinfo, str(model_path), "a greedy objective")


def test_training_is_deterministic_and_reads_jsonl_and_directories(text_file, model_path,
                                                                    tmp_path):
    again = train_sentencepiece([str(text_file)], SIZE, tmp_path / "again.model")
    assert again.read_bytes() == model_path.read_bytes()
    # The same text as JSONL documents of several lines each, inside a directory.
    lines = _corpus_lines()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "docs.jsonl").write_text("".join(
        json.dumps({"text": "\n".join(lines[i:i + 3]), "url": "u"}) + "\n"
        for i in range(0, len(lines), 3)))
    from_jsonl = train_sentencepiece(corpus, SIZE, tmp_path / "jsonl.model")
    assert from_jsonl.read_bytes() == model_path.read_bytes()


def test_model_vocab_size_rounds_up():
    byte = load_vocabulary("byte")
    assert model_vocab_size(byte) == 384 and model_vocab_size(byte, multiple=1) == 359
    assert model_vocab_size(byte, multiple=8) == 360
    with pytest.raises(ValueError, match="multiple=0"):
        model_vocab_size(byte, multiple=0)


def test_t5_vocabulary_loads_lazily_and_can_point_at_a_local_copy(model_path, monkeypatch):
    monkeypatch.delenv(vocab.T5_SPM_ENV, raising=False)
    t5 = load_vocabulary("t5")  # a gs:// path: seqio reads it on first use, not here
    assert t5.sentencepiece_model_file == T5_SPM_PATH and t5.extra_ids == NUM_SENTINELS
    assert model_vocab_size(t5) == 32_128  # known without downloading: 32,000 + 100 -> 32,128
    monkeypatch.setenv(vocab.T5_SPM_ENV, str(model_path))
    local = load_vocabulary("t5")
    assert local.sentencepiece_model_file == str(model_path) and local.vocab_size == SIZE + 100
    monkeypatch.setenv(vocab.T5_SPM_ENV, str(model_path.parent / "missing.model"))
    with pytest.raises(VocabularyError) as excinfo:
        load_vocabulary("t5")
    assert_one_line_error(excinfo, vocab.T5_SPM_ENV, "missing.model", "archobj vocab train")


def test_bad_vocabulary_files_raise_one_line_naming_the_path(text_file, tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(VocabularyError) as excinfo:
        load_vocabulary(str(missing))
    assert_one_line_error(excinfo, str(missing), "no such file", "archobj vocab train")
    with pytest.raises(VocabularyError) as excinfo:
        load_vocabulary(str(tmp_path))
    assert_one_line_error(excinfo, str(tmp_path), "directory")
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"\x00not a sentencepiece model\xff" * 4)
    with pytest.raises(VocabularyError) as excinfo:
        load_vocabulary(str(corrupt))
    assert_one_line_error(excinfo, str(corrupt), "not a SentencePiece model", "archobj vocab train")
    # SentencePiece's own defaults (unk 0, bos 1, eos 2): seqio would read every <unk> as padding.
    import sentencepiece
    default_ids = tmp_path / "default_ids.model"
    sentencepiece.SentencePieceTrainer.train(
        input=str(text_file), model_prefix=str(default_ids.with_suffix("")), vocab_size=SIZE,
        num_threads=1, minloglevel=2)
    with pytest.raises(VocabularyError) as excinfo:
        load_vocabulary(str(default_ids))
    assert_one_line_error(excinfo, str(default_ids), "pad id -1", "eos id 2")
    # A vocabulary built by hand without sentinels is caught before span corruption uses it.
    with pytest.raises(VocabularyError) as excinfo:
        require_sentinels(seqio.SentencePieceVocabulary(str(default_ids), extra_ids=0))
    assert_one_line_error(excinfo, str(default_ids), "span corruption (MLM)")


def test_bad_training_inputs_raise_one_line(text_file, tmp_path):
    out = tmp_path / "out.model"
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    with pytest.raises(VocabularyError) as excinfo:
        train_sentencepiece([blank], SIZE, out)
    assert_one_line_error(excinfo, str(blank), "no text")
    with pytest.raises(VocabularyError) as excinfo:
        train_sentencepiece([text_file], 50_000, out)
    assert_one_line_error(excinfo, "--size 50000", "too large", "lower --size")
    with pytest.raises(sources.SourceError) as excinfo:
        train_sentencepiece([tmp_path / "absent.txt"], SIZE, out)
    assert_one_line_error(excinfo, "absent.txt", "no such file")
    with pytest.raises(VocabularyError) as excinfo:
        train_sentencepiece([text_file], SIZE, tmp_path / "out.spm")
    assert_one_line_error(excinfo, "out.spm", ".model")
    assert not out.exists() and not out.with_suffix(".vocab").exists()  # nothing half-written
