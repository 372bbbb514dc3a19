"""Writing a world: corpus, multitask mixture, held-out suite, tokenizer and manifest, atomically.

Layout of ``out_dir`` (all paths relative to it; ``world.json`` lists every file with its hash)::

    corpus.txt                       pretraining text, one document per line (data.source)
    mtf/world_<family>__<template>.jsonl   the multitask mixture (data.source with objective mtf)
    eval/<hub path>/<config>/<split>.jsonl the held-out suite (archobj eval --data-dir)
    spiece.model, spiece.vocab       SentencePiece on T5's ids (data.vocabulary)
    world.json                       the manifest

The directory is built beside ``out_dir`` and renamed into place at the end, so a reader never sees
half a world; writing the same (version, seed, size) again finds the manifest and its files intact
and returns without writing anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from objectives.world import corpus as corpus_lib
from objectives.world import heldout, mtf
from objectives.world.facts import make_world

# Bump whenever the generated text can change: a written world is reused only at the same version.
VERSION = 4  # 4: verdicts balanced in every answer vocabulary; 3: 96 held-out examples per dataset; 2: 60 (1: 120)
MANIFEST = "world.json"
CORPUS = "corpus.txt"
MTF_DIR = "mtf"
EVAL_DIR = "eval"
VOCABULARY = "spiece.model"


@dataclasses.dataclass(frozen=True)
class WorldSize:
    """How big a world is.

    Attributes:
      people: people in the world (half women); 5 facts each. Fewer people learn faster.
      towns: towns they live in (at least 4: ARC-style questions have four choices).
      corpus_documents: pretraining documents (one line each, ~30 tokens on average).
      mtf_examples: raw examples per multitask family (each rendered by every template).
      eval_examples: examples per held-out dataset (labels exactly balanced when divisible).
      vocab_pieces: SentencePiece pieces, including pad/eos/unk and the 256 byte-fallback pieces
        (archobj adds 100 sentinel ids on top).
    """

    people: int = 8
    towns: int = 4
    corpus_documents: int = 60_000
    mtf_examples: int = 600
    # 96 (divisible by 2, 3 and 4: every label balanced): a T0-Eval aggregate (the mean over 11
    # datasets of the median over 4 prompts) then has a 95% half-width of about 3 points or less
    # in one replicate (widest measured 3.05), where 60 gave 2.7-3.7 (objectives/WORLD.md);
    # evaluation takes about a third of the tiny grid's wall time (7:42 of 22:57, two seeds).
    eval_examples: int = 96
    vocab_pieces: int = 1024

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"size.{field.name}={value!r}: must be a positive integer")
        if self.corpus_documents < 2:
            raise ValueError(f"size.corpus_documents={self.corpus_documents}: must be >= 2")
        if self.eval_examples < 12:
            raise ValueError(f"size.eval_examples={self.eval_examples}: must be >= 12 (every "
                             "label of every dataset, balanced)")


SIZES: dict[str, WorldSize] = {
    "default": WorldSize(),
    # For tests and smoke runs: seconds to write, nothing learnable in it.
    "test": WorldSize(people=4, towns=4, corpus_documents=1_500, mtf_examples=24,
                      eval_examples=12, vocab_pieces=700),
}


def resolve_size(size: str | WorldSize | Mapping[str, int]) -> WorldSize:
    """A ``WorldSize`` from a preset name, a ``WorldSize`` or a mapping of its fields.

    Raises:
      ValueError: an unknown preset or field, or a bad value.
    """
    if isinstance(size, WorldSize):
        return size
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"size={size!r}: unknown; one of {sorted(SIZES)} or a WorldSize")
        return SIZES[size]
    unknown = set(size) - {f.name for f in dataclasses.fields(WorldSize)}
    if unknown:
        raise ValueError(f"size: unknown field(s) {sorted(unknown)}; allowed: "
                         f"{[f.name for f in dataclasses.fields(WorldSize)]}")
    return WorldSize(**size)


# -------------------------------------------------------------------------------------------------
# Leakage guard: no held-out text inside a multitask example
# -------------------------------------------------------------------------------------------------

_KEY_WORDS = 4  # held-out fields are indexed by their first words


class HeldOutIndex:
    """The held-out examples' text fields (of at least ``_KEY_WORDS`` words), for substring checks
    against multitask text in time linear in the text's length."""

    def __init__(self, examples: Mapping[str, list[dict[str, Any]]]):
        self.by_key: dict[tuple[str, ...], set[str]] = {}
        for name, rows in examples.items():
            for row in rows:
                for text in heldout.text_fields(name, row):
                    words = tuple(text.split())
                    if len(words) >= _KEY_WORDS:
                        self.by_key.setdefault(words[:_KEY_WORDS], set()).add(text)

    def find(self, text: str) -> str | None:
        """A held-out field that occurs in ``text``, or None."""
        words = text.split()
        for start in range(len(words) - _KEY_WORDS + 1):
            for field in self.by_key.get(tuple(words[start:start + _KEY_WORDS]), ()):
                if field in text:
                    return field
        return None


def _example_text(example: Mapping[str, Any]) -> str:
    return "\n".join(str(v) for v in example.values())


# -------------------------------------------------------------------------------------------------
# Tokenizer
# -------------------------------------------------------------------------------------------------

def train_tokenizer(lines: Iterable[str], pieces: int) -> bytes:
    """A SentencePiece unigram model on T5's ids (pad 0, eos 1, unk 2, no bos) with byte fallback,
    trained on ``lines`` in the given order with one thread and a fixed seed: deterministic.

    Returns:
      The serialized model.
    """
    import sentencepiece

    from objectives import vocab

    sentencepiece.SetRandomGeneratorSeed(0)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(lines)), model_writer=model, vocab_size=pieces,
        model_type="unigram", character_coverage=1.0, byte_fallback=True,
        pad_id=vocab.PAD_ID, eos_id=vocab.EOS_ID, unk_id=vocab.UNK_ID, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", num_threads=1,
        shuffle_input_sentence=False, max_sentence_length=8192, hard_vocab_limit=False,
        minloglevel=2)
    return model.getvalue()


def _vocab_text(proto: bytes) -> str:
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    return "".join(f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n"
                   for i in range(processor.get_piece_size()))


# -------------------------------------------------------------------------------------------------
# Writing
# -------------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as stream:
        for row in rows:
            stream.write(json.dumps(dict(row), ensure_ascii=False) + "\n")


def _identity(seed: int, size: WorldSize) -> dict[str, Any]:
    return {"generator": "objectives.world", "version": VERSION, "seed": seed,
            "size": dataclasses.asdict(size)}


def read_manifest(out_dir: str | os.PathLike, verify: bool = True) -> dict[str, Any] | None:
    """The manifest of a written world, or None if there is none or (``verify``) a listed file is
    missing or changed."""
    path = Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if verify:
        for relative, entry in manifest.get("files", {}).items():
            file = Path(out_dir) / relative
            if (not file.is_file() or file.stat().st_size != entry["bytes"]
                    or _sha256(file) != entry["sha256"]):
                return None
    return manifest


def write_world(out_dir: str | os.PathLike, seed: int = 0, *,
                size: str | WorldSize | Mapping[str, int] = "default") -> dict[str, Any]:
    """Writes the world of ``seed`` into ``out_dir`` (see the module docstring) and returns its
    manifest. A no-op when ``out_dir`` already holds this world intact (same version, seed, size).

    Args:
      out_dir: the directory to write; an existing different world there is replaced.
      seed: the world's seed (facts, corpus, examples: everything).
      size: a preset name (``SIZES``), a ``WorldSize`` or a mapping of its fields.

    Returns:
      The manifest (also ``out_dir/world.json``): generator version, seed, size, task lists per
      suite, counts, vocabulary sizes, and every file with its size and sha256.

    Raises:
      ValueError: a bad seed or size.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r}: must be a non-negative integer")
    size = resolve_size(size)
    out = Path(out_dir)
    existing = read_manifest(out)
    if existing is not None and {k: existing.get(k) for k in ("generator", "version", "seed",
                                                               "size")} == _identity(seed, size):
        return existing

    out.parent.mkdir(parents=True, exist_ok=True)
    building = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    try:
        manifest = _build(building, seed, size)
        if out.exists():  # replace the old world only once the new one is complete
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(building, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(building, out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return manifest


def _build(root: Path, seed: int, size: WorldSize) -> dict[str, Any]:
    from objectives import t0, vocab

    world = make_world(seed, size.people, size.towns)
    root.mkdir(parents=True)

    # Held-out suite first: the mixture is checked against it.
    examples = heldout.make_heldout(world, seed, size.eval_examples)
    for name, rows in examples.items():
        for relative in heldout.FILES[name]:
            converted = heldout.glue_rte(rows) if relative.startswith("nyu-mll/glue/rte") else rows
            _write_jsonl(root / EVAL_DIR / relative, converted)

    guard = HeldOutIndex(examples)
    mixture = mtf.make_mixture(world, seed, size.mtf_examples,
                               reject=lambda example: guard.find(_example_text(example)) is not None)
    t0.write_prompted_jsonl(mixture, mtf.templates(), root / MTF_DIR)

    documents = list(corpus_lib.documents(world, seed, size.corpus_documents))
    (root / CORPUS).write_text("".join(d + "\n" for d in documents), encoding="utf-8")

    # The tokenizer sees the corpus and the mixture's prompts (never the held-out suite).
    mixture_lines = []
    for path in sorted((root / MTF_DIR).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            mixture_lines += record["inputs"].splitlines() + [record["targets"]]
    proto = train_tokenizer(documents + mixture_lines, size.vocab_pieces)
    (root / VOCABULARY).write_bytes(proto)
    (root / VOCABULARY).with_suffix(".vocab").write_text(_vocab_text(proto), encoding="utf-8")
    ids = vocab.vocabulary_ids(str(root / VOCABULARY))

    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        files[path.relative_to(root).as_posix()] = {"bytes": path.stat().st_size,
                                                    "sha256": _sha256(path)}
    manifest = {
        **_identity(seed, size),
        "paths": {"corpus": CORPUS, "mtf": MTF_DIR, "eval": EVAL_DIR, "vocabulary": VOCABULARY},
        "tasks": {"t0": list(heldout.T0_TASKS), "eai": list(heldout.EAI_TASKS)},
        "counts": {"corpus_documents": len(documents),
                   "mtf_examples": {k: len(v) for k, v in mixture.items()},
                   "mtf_templates": sum(len(ts) for ts in mtf.templates().values()),
                   "eval_examples": {k: len(v) for k, v in examples.items()}},
        "vocabulary": {"pieces": size.vocab_pieces, "ids": ids,
                       "model_vocab_size": -(-ids // 128) * 128},
        "facts": [dataclasses.asdict(p) for p in world.people],
        "files": files,
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest

