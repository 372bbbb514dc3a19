"""A local, offline reference for zero-shot evaluation: a random Hugging Face T5, its tokenizer, its
archobj conversion, and a synthetic multiple-choice lm-eval task.

The evaluation path of the study (PAPER.md 3.1: lm-eval ``loglikelihood`` requests, ``acc``) is
checked here against lm-eval's own Hugging Face backend (``hf``, backend ``seq2seq``) on *the same
weights*: a small randomly initialised T5 in the T5 v1.1 layout (gated GELU, untied unscaled
``lm_head``), saved with a SentencePiece tokenizer that is trained locally on T5's ids (pad 0,
eos 1, unk 2, no bos), and converted by ``harness.storage.convert`` into an archobj ``"ed"`` checkpoint.
Nothing is downloaded: the tokenizer, the weights and the questions are all made here,
deterministically from a seed.

What lm-eval 0.4.13's ``hf`` seq2seq backend feeds a T5 (``TemplateLM.loglikelihood`` ->
``_encode_pair`` -> ``HFLM.tok_encode`` -> ``HFLM._loglikelihood_tokens``), and therefore what any
backend compared with it must feed the model (``lm_eval_seq2seq_tokens`` implements it with the
``sentencepiece`` package alone)::

    trailing whitespace of the context moves to the front of the continuation;
    encoder input  = tokenizer.encode(context)  with add_special_tokens left at the tokenizer's
                     default: T5's post-processor appends EOS (id 1); no BOS (T5 has none)
                     (no EOS either if the context string itself starts with "</s>");
    targets        = tokenizer.encode(continuation, add_special_tokens=False): no EOS;
    empty context  -> encoder input [EOS] (the "prefix token": bos, else eos), targets unchanged
                     (if the continuation itself starts with EOS, that token becomes the input);
    truncation     : encoder input keeps its last ``max_length`` ids, targets their last
                     ``max_length`` (``max_length`` = 2048 for a T5 config, which has no
                     ``n_positions``, unless the model is built with ``max_length=``);
    decoder input  = targets shifted right with decoder_start_token_id 0 (inside HF T5);
    score          = sum over the target positions of log_softmax(logits)[target] (float32),
                     is_greedy = every target equals the argmax at its position.

Batches are right-padded with 0 on both sides, with an encoder attention mask; the decoder's
causal mask makes its right padding irrelevant to the scored positions. (Text that spells a special
token, e.g. "</s>" or "<extra_id_0>", is one id to the HF tokenizer but plain characters to
``sentencepiece``; the fixture questions contain none.)

One trap on the HF side: lm-eval calls ``tie_weights()`` after loading, which swaps a T5 v1.1
``lm_head`` for the input embedding under transformers 5 (``hf_reference_lm`` undoes it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random
import shutil
import tempfile
from typing import Any, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]

# T5's ids, which objectives.vocab.train_sentencepiece also uses.
PAD_ID, EOS_ID = 0, 1
# lm-eval's default maximum length for a model whose config has no length field (T5's).
LM_EVAL_DEFAULT_MAX_LENGTH = 2048
# SentencePiece pieces of the reference tokenizer (HF adds 100 sentinels on top).
DEFAULT_TOKENIZER_PIECES = 256
NUM_SENTINELS = 100
FIXTURE_TASK = "archobj_fixture_mc"

_HF_DIR, _ARCHOBJ_DIR, _SPM_FILE, _MANIFEST = "hf", "archobj", "spm.model", "reference.json"


class ReferenceError(ValueError):
    """Bad arguments for a reference model or fixture task; the message is one line."""


# -------------------------------------------------------------------------------------------------
# Synthetic text: one lexicon for the tokenizer's corpus and for the questions.
# -------------------------------------------------------------------------------------------------

_NAMES = ("Alice", "Bruno", "Chen", "Dara", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jana",
          "Kofi", "Lena", "Mateo", "Nora", "Omar", "Priya")
_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey",
            "brown", "pink", "silver")
_ANIMALS = ("cat", "dog", "horse", "rabbit", "fox", "owl", "goat", "mouse", "bear", "lion",
            "duck", "sheep", "otter", "crow")
_PLACES = ("the river", "the old mill", "the market", "the hill", "the school", "the harbour",
           "the forest", "the bakery", "the station", "the bridge", "the library", "the farm")
_ADJECTIVES = ("small", "large", "quiet", "noisy", "young", "old", "clever", "sleepy", "hungry",
               "happy", "muddy", "tiny")
_FEELINGS = ("tired", "happy and calm", "hungry for some warm bread", "cold", "sad",
             "excited to go home", "bored", "proud of the work", "surprised",
             "worried about the rain")
_WEATHER = ("sunny", "rainy", "windy", "cold", "warm", "foggy", "grey")
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
            "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
            "eighteen", "nineteen", "twenty")
_TENS = ("twenty", "thirty", "forty")


def _number_words(n: int) -> str:
    """0 <= n < 50 in English words ("thirty two"): multi-token answers for the arithmetic type."""
    if n <= 20:
        return _NUMBERS[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens - 2] + ("" if ones == 0 else " " + _NUMBERS[ones])


def _filler(rng: random.Random) -> str:
    """0-2 context sentences, so that context lengths (and the padded shapes) vary."""
    sentences = [f"The weather was {rng.choice(_WEATHER)} that day.",
                 f"{rng.choice(_NAMES)} had walked past {rng.choice(_PLACES)} in the morning.",
                 f"A {rng.choice(_ADJECTIVES)} {rng.choice(_ANIMALS)} was singing somewhere."]
    return " ".join(rng.sample(sentences, rng.randint(0, 2)))


def _distinct(rng: random.Random, correct: str, pool: Sequence[str], k: int) -> list[str]:
    """``k`` distinct choices including ``correct``, in a random order."""
    others = [c for c in dict.fromkeys(pool) if c != correct]
    if len(others) < k - 1:
        raise ReferenceError(f"choices={k}: at most {len(others) + 1} distinct choices can be made")
    options = rng.sample(others, k - 1) + [correct]
    rng.shuffle(options)
    return options


def make_question(rng: random.Random, choices: int) -> dict[str, Any]:
    """One synthetic multiple-choice question ``{"question", "choices", "answer"}``.

    Four kinds, so that contexts and continuations vary in length (1 to 6 words per choice):
    colour recall, word arithmetic, "which animal" with adjectives, and sentence completion.
    """
    kind = rng.randrange(4)
    name, other = rng.sample(_NAMES, 2)
    place = rng.choice(_PLACES)
    filler = _filler(rng)
    if kind == 0:
        colour, animal = rng.choice(_COLOURS), rng.choice(_ANIMALS)
        text = (f"{name} saw a {colour} {animal} near {place} and told {other} about it. "
                f"What colour was the {animal}?")
        options = _distinct(rng, colour, _COLOURS, choices)
        correct = colour
    elif kind == 1:
        a, b = rng.randint(0, 24), rng.randint(0, 24)
        text = (f"{name} had {_number_words(a)} apples and bought {_number_words(b)} more at "
                f"{place}. How many apples does {name} have now?")
        correct = _number_words(a + b)
        options = _distinct(rng, correct, [_number_words(n) for n in range(49)], choices)
    elif kind == 2:
        animal = f"a {rng.choice(_ADJECTIVES)} {rng.choice(_ANIMALS)}"
        text = (f"Which animal did {name} find sleeping under a {rng.choice(_COLOURS)} blanket "
                f"at {place}?")
        pool = [f"a {adj} {a}" for adj in _ADJECTIVES for a in _ANIMALS]
        options = _distinct(rng, animal, pool, choices)
        correct = animal
    else:
        feeling = rng.choice(_FEELINGS)
        text = f"After the long walk to {place}, {name} was very"
        options = _distinct(rng, feeling, _FEELINGS, choices)
        correct = feeling
    question = f"{filler} {text}".strip()
    return {"question": question, "choices": options, "answer": options.index(correct)}


def synthetic_corpus(num_lines: int = 3000, seed: int = 1) -> list[str]:
    """Text for the reference tokenizer: questions and answers of every kind, plus every printable
    ASCII character, so that no fixture text tokenizes to ``<unk>``."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        q = make_question(rng, 4)
        lines.append(f"Question: {q['question']}")
        lines.append(f"Answer: {' '.join(q['choices'])}.")
    printable = "".join(chr(c) for c in range(33, 127))
    lines += [printable] * 20
    return lines


# -------------------------------------------------------------------------------------------------
# The reference model.
# -------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ReferenceT5:
    """Paths and facts of one reference model made by ``make_reference_t5``.

    Attributes:
      root: the directory holding everything below.
      hf_dir: Hugging Face model directory (weights + tokenizer): lm-eval ``hf``'s ``pretrained``.
      archobj_dir: the converted archobj ``"ed"`` model directory (float32 compute).
      spm_model: the SentencePiece model file (T5 ids): the archobj side's ``vocabulary``.
      d_model: model width.
      num_layers: layers per stack (encoder and decoder each).
      num_heads: attention heads.
      d_ff: GEGLU hidden width.
      vocab_size: embedding rows of the model.
      tokenizer_size: ids the tokenizer can produce (pieces + 100 sentinels).
      num_parameters: parameter count of the HF model (embedding and head counted once each).
    """

    root: pathlib.Path
    hf_dir: pathlib.Path
    archobj_dir: pathlib.Path
    spm_model: pathlib.Path
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    vocab_size: int
    tokenizer_size: int
    num_parameters: int


def make_reference_t5(out_dir: PathLike, *, d_model: int = 64, num_layers: int = 2,
                      vocab_size: int = 32128, seed: int = 0, num_heads: Optional[int] = None,
                      d_ff: Optional[int] = None,
                      tokenizer_pieces: int = DEFAULT_TOKENIZER_PIECES) -> ReferenceT5:
    """Builds a random T5 v1.1-layout model, its tokenizer, and its archobj conversion.

    The defaults of ``num_heads`` and ``d_ff`` follow T5 v1.1 small-ish proportions: heads of 64
    (at least 2 heads), ``d_ff = 2 * d_model``. With ``d_model=512, num_layers=6, vocab_size=32128``
    this is DEPS.md's 70.7M-parameter reference model.

    Every parameter is non-trivial: layer-norm scales are ``1 + 0.5 N(0, 1)``, position tables
    ``N(0, 1)``, and ``lm_head`` has its own ``N(0, 1)`` weights (transformers 5 would otherwise
    tie it to the input embedding, DEPS.md), so that a backend that mixes up the head, a norm or a
    position table disagrees with the reference. The global torch RNG is left as it was.

    Args:
      out_dir: directory to create (it must not exist, or be empty).
      d_model: model width.
      num_layers: layers of each stack (encoder and decoder).
      vocab_size: embedding rows (the study's 32,128 by default); must hold the tokenizer's
        ``tokenizer_pieces + 100`` ids.
      seed: seeds the weights (the tokenizer and questions have their own fixed seeds).
      num_heads: attention heads; default ``max(2, d_model // 64)``.
      d_ff: GEGLU hidden width; default ``2 * d_model``.
      tokenizer_pieces: SentencePiece pieces of the tokenizer (before the 100 sentinels).

    Returns:
      The ``ReferenceT5`` paths.

    Raises:
      ReferenceError: bad sizes, or an ``out_dir`` that already holds files.
    """
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel

    from harness.storage import convert  # pylint: disable=import-outside-toplevel
    from objectives import vocab  # pylint: disable=import-outside-toplevel

    num_heads = num_heads or max(2, d_model // 64)
    d_ff = d_ff or 2 * d_model
    if d_model < 1 or num_layers < 1 or d_ff < 1:
        raise ReferenceError(f"d_model={d_model}, num_layers={num_layers}, d_ff={d_ff}: "
                             "all must be >= 1")
    if d_model % num_heads:
        raise ReferenceError(f"num_heads={num_heads} does not divide d_model={d_model}")
    if tokenizer_pieces + NUM_SENTINELS > vocab_size:
        raise ReferenceError(
            f"vocab_size={vocab_size} cannot hold the tokenizer's {tokenizer_pieces} pieces + "
            f"{NUM_SENTINELS} sentinels; raise vocab_size or lower tokenizer_pieces")
    # Absolute: orbax refuses relative checkpoint paths.
    root = pathlib.Path(out_dir).expanduser().resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ReferenceError(f"{root}: exists and is not an empty directory; choose a new one")
    root.mkdir(parents=True, exist_ok=True)
    hf_dir, archobj_dir = root / _HF_DIR, root / _ARCHOBJ_DIR

    # Tokenizer: SentencePiece on T5's ids, converted by transformers itself into its T5Tokenizer
    # (which appends the 100 sentinels in T5's order, <extra_id_0> = the highest id).
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        corpus = pathlib.Path(scratch) / "corpus.txt"
        corpus.write_text("\n".join(synthetic_corpus()) + "\n")
        spm_model = vocab.train_sentencepiece(corpus, tokenizer_pieces, root / _SPM_FILE)
        spiece_dir = pathlib.Path(scratch) / "spiece"
        spiece_dir.mkdir()
        shutil.copy(spm_model, spiece_dir / "spiece.model")
        tokenizer = transformers.T5Tokenizer.from_pretrained(str(spiece_dir),
                                                             extra_ids=NUM_SENTINELS)
    if (tokenizer.pad_token_id, tokenizer.eos_token_id) != (PAD_ID, EOS_ID):
        raise AssertionError(f"reference tokenizer has pad {tokenizer.pad_token_id}, eos "
                             f"{tokenizer.eos_token_id}; T5's are {PAD_ID}, {EOS_ID}")

    hf_config = transformers.T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=d_model // num_heads, d_ff=d_ff,
        num_layers=num_layers, num_decoder_layers=num_layers, num_heads=num_heads,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
        decoder_start_token_id=PAD_ID, pad_token_id=PAD_ID, eos_token_id=EOS_ID)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.T5ForConditionalGeneration(hf_config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "layer_norm" in name:
                    param.copy_(1.0 + 0.5 * torch.randn_like(param))
                elif "relative_attention_bias" in name:
                    param.copy_(torch.randn_like(param))
            model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab_size, d_model))
    model.eval()
    num_parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(hf_dir))
    tokenizer.save_pretrained(str(hf_dir))

    convert.convert_hf_t5(hf_dir, archobj_dir, dtype="float32", param_dtype="float32")
    reference = ReferenceT5(root=root, hf_dir=hf_dir, archobj_dir=archobj_dir, spm_model=spm_model,
                            d_model=d_model, num_layers=num_layers, num_heads=num_heads,
                            d_ff=d_ff, vocab_size=vocab_size, tokenizer_size=len(tokenizer),
                            num_parameters=num_parameters)
    (root / _MANIFEST).write_text(json.dumps({
        "d_model": d_model, "num_layers": num_layers, "num_heads": num_heads, "d_ff": d_ff,
        "vocab_size": vocab_size, "seed": seed, "tokenizer_pieces": tokenizer_pieces,
        "tokenizer_size": len(tokenizer), "num_parameters": num_parameters}, indent=2) + "\n")
    return reference


# -------------------------------------------------------------------------------------------------
# The fixture task.
# -------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FixtureTask:
    """A local multiple-choice lm-eval task written by ``write_fixture_task``.

    Attributes:
      name: the task name to pass to lm-eval.
      include_path: the directory to give ``lm_eval.tasks.TaskManager(include_path=...)``.
      data_file: the JSONL file of questions.
      docs: the questions, as written.
    """

    name: str
    include_path: pathlib.Path
    data_file: pathlib.Path
    docs: tuple[dict[str, Any], ...]

    @property
    def num_requests(self) -> int:
        """Loglikelihood requests lm-eval makes: one per (question, choice)."""
        return sum(len(doc["choices"]) for doc in self.docs)

    def requests(self) -> list[tuple[str, str]]:
        """The ``(context, continuation)`` pairs lm-eval builds from the docs, in doc order."""
        return [(fixture_context(doc), " " + choice) for doc in self.docs
                for choice in doc["choices"]]

    def task_manager(self) -> Any:
        """An ``lm_eval.tasks.TaskManager`` that knows only this task (skipping lm-eval's
        built-in index saves ~15 s, DEPS.md)."""
        from lm_eval.tasks import TaskManager  # pylint: disable=import-outside-toplevel
        return TaskManager(include_path=str(self.include_path), include_defaults=False)


def fixture_context(doc: dict[str, Any]) -> str:
    """The task's ``doc_to_text`` (kept in step with the YAML ``write_fixture_task`` writes)."""
    return f"Question: {doc['question']}\nAnswer:"


def write_fixture_task(directory: PathLike, n: int, choices: int = 4, *, seed: int = 0,
                       name: str = FIXTURE_TASK) -> FixtureTask:
    """Writes ``n`` deterministic synthetic ``choices``-way questions as a local lm-eval task.

    The task YAML reads the JSONL through ``dataset_path: json`` with ``data_files`` (and keeps the
    ``datasets`` cache inside ``directory``), so it loads offline. Metrics: ``acc`` and
    ``acc_norm``. Context: ``"Question: {question}\\nAnswer:"``; continuations: ``" " + choice``
    (lm-eval's default target delimiter).

    Args:
      directory: where to write ``<name>.yaml``, ``<name>.jsonl`` and the datasets cache; created
        if missing.
      n: number of questions (>= 1).
      choices: choices per question (2 to 10).
      seed: the questions' seed.
      name: the task name (a valid lm-eval task name).

    Returns:
      The ``FixtureTask``.

    Raises:
      ReferenceError: ``n < 1`` or ``choices`` outside [2, 10].
    """
    if n < 1:
        raise ReferenceError(f"n={n}: the fixture task needs at least one question")
    if not 2 <= choices <= 10:
        raise ReferenceError(f"choices={choices}: must be between 2 and 10")
    directory = pathlib.Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    docs = tuple(dict(make_question(rng, choices), id=i) for i in range(n))
    data_file = directory / f"{name}.jsonl"
    data_file.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    # JSON strings are valid YAML scalars: json.dumps quotes paths and the template safely.
    yaml = "\n".join([
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data_file))}",
        f"  cache_dir: {json.dumps(str(directory / 'datasets_cache'))}",
        "test_split: test",
        "output_type: multiple_choice",
        # Must stay equal to fixture_context().
        'doc_to_text: "Question: {{question}}\\nAnswer:"',
        "doc_to_target: answer",
        "doc_to_choice: choices",
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "  - metric: acc_norm",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        "  version: 1.0",
        ""])
    (directory / f"{name}.yaml").write_text(yaml)
    return FixtureTask(name=name, include_path=directory, data_file=data_file, docs=docs)


# -------------------------------------------------------------------------------------------------
# lm-eval's Hugging Face model on the reference.
# -------------------------------------------------------------------------------------------------

def hf_reference_lm(reference: ReferenceT5, batch_size: int = 8) -> Any:
    """lm-eval's ``hf`` model on the reference weights: backend seq2seq, device cpu, float32.

    lm-eval 0.4.13 calls ``model.tie_weights()`` right after ``from_pretrained``
    (``HFLM.__init__``), and transformers 5.23's T5 config always says
    ``tie_word_embeddings=True`` (the v1.1 layout is recorded as ``scale_decoder_outputs=False``):
    so lm-eval replaces the untied ``lm_head`` that ``from_pretrained`` loaded by the input
    embedding, and scores every T5 v1.1 / T0 checkpoint with the wrong output layer. This puts the
    checkpoint's own ``lm_head.weight`` back, which is what the model on disk computes (and what
    transformers' own ``from_pretrained`` gives).

    Args:
      reference: from ``make_reference_t5``.
      batch_size: lm-eval's batch size.

    Returns:
      An ``lm_eval.models.huggingface.HFLM``.
    """
    import torch  # pylint: disable=import-outside-toplevel
    from lm_eval.models.huggingface import HFLM  # pylint: disable=import-outside-toplevel
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel

    lm = HFLM(pretrained=str(reference.hf_dir), backend="seq2seq", device="cpu",
              dtype="float32", batch_size=batch_size)
    with safe_open(str(reference.hf_dir / "model.safetensors"), framework="pt") as weights:
        head = weights.get_tensor("lm_head.weight")
    model = lm.model
    model.lm_head.weight = torch.nn.Parameter(head.to(model.shared.weight.dtype),
                                              requires_grad=False)
    return lm


# -------------------------------------------------------------------------------------------------
# lm-eval's seq2seq tokenization, with sentencepiece alone.
# -------------------------------------------------------------------------------------------------

def lm_eval_seq2seq_tokens(processor: Any, context: str, continuation: str,
                           max_length: int = LM_EVAL_DEFAULT_MAX_LENGTH,
                           ) -> tuple[list[int], list[int]]:
    """The (encoder ids, target ids) lm-eval 0.4.13's ``hf`` seq2seq backend scores for a T5.

    See the module docstring for the rules; this follows ``TemplateLM.loglikelihood`` /
    ``_encode_pair`` and ``HFLM.tok_encode`` / ``_loglikelihood_tokens`` for a tokenizer whose
    post-processor appends EOS (T5's) and that has no BOS.

    Args:
      processor: a ``sentencepiece.SentencePieceProcessor`` on T5's ids (the same model as the HF
        tokenizer's).
      context: the request's context string.
      continuation: the request's continuation string.
      max_length: lm-eval's ``max_length`` (left truncation of both sides).

    Returns:
      ``(encoder_input_ids, target_ids)``.
    """
    if context == "":
        targets = processor.encode(continuation)
        inputs = [EOS_ID]
        if targets and targets[0] == EOS_ID:
            inputs, targets = targets[:1], targets[1:]
    else:
        stripped = context.rstrip()
        continuation = context[len(stripped):] + continuation
        context = stripped
        inputs = processor.encode(context)
        # HFLM.tok_encode turns special tokens off when the string already starts with the
        # prefix token's text; otherwise T5's post-processor appends EOS.
        if not context.startswith(processor.id_to_piece(EOS_ID)):
            inputs = inputs + [EOS_ID]
        targets = processor.encode(continuation)
    return inputs[-max_length:], targets[-max_length:]
