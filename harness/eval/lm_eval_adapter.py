"""lm-evaluation-harness 0.4.13 model ``archobj``: a thin adapter over ``harness.eval.scoring.Scorer``.

Importing this module registers the model with lm-eval, so that ``lm_eval.simple_evaluate(model=
"archobj", model_args="checkpoint=runs/cd_flm,batch_size=8")`` finds it (PAPER.md 3.1; STYLE.md
B2.8). Import it only when evaluating: lm-eval itself is slow to import, so the CLI must not load
it at start-up.

What lm-eval sees:

* ``backend``: ``"causal"`` for cd/nd, ``"seq2seq"`` for ed. lm-eval's ``TemplateLM._encode_pair``
  moves trailing spaces of the context to the continuation, then for "causal" tokenizes context +
  continuation together and splits after the context's tokens, and for "seq2seq" tokenizes the two
  separately. Nothing adds EOS: the study's harness tokenized with ``add_eos=False``
  (AO ``t5x/eval_harness.py``). An empty context becomes ``[EOS]`` (lm-eval's ``prefix_token_id``).
* ``loglikelihood``: ``Scorer.loglikelihood`` (exact rows of training, see ``harness/eval/scoring.py``).
* ``loglikelihood_rolling``: decoders: lm-eval's disjoint rolling windows (as its Hugging Face
  backend), each window one row of at most ``max_inputs_length + max_targets_length`` tokens
  (the first window's context is ``[EOS]``). ed: the document is cut into chunks of
  ``max_targets_length`` tokens; each chunk is a decoder target and its encoder input is everything
  before it (left-truncated to ``max_inputs_length``; ``[EOS]`` for the first chunk): a prefix-LM
  reading of the document, the way the encoder-decoder is trained on PLM.
* ``generate_until``: greedy, with the KV cache; stops at EOS, at any ``until`` string (the text is
  cut before it, as lm-eval's other backends do) or after ``max_gen_toks`` tokens. Sampling is
  refused.

For token-level work (T0-Eval rank classification) ``score_tokens`` scores id pairs directly.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
from typing import Any, Optional, Sequence, Union

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval import utils as lm_eval_utils

from harness.storage import checkpoint as ckpt
from harness.eval.scoring import Scorer, resolve_architecture, with_dtype
from harness.eval.tokenizer import Tokenizer, load_tokenizer

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# Arguments lm-eval's evaluator may add to every model's constructor (simple_evaluate's
# additional_config). The device is JAX's default one, and batch sizes are fixed.
_IGNORED_ARGUMENTS = ("device", "max_batch_size")


@register_model("archobj")
class ArchobjLM(TemplateLM):
    """An archobj checkpoint (cd, nd or ed) as an lm-eval model.

    Args:
      checkpoint: a model or run directory (``config.json`` + ``checkpoints/``).
      vocabulary: ``"byte"``, ``"t5"`` or a SentencePiece ``.model`` path; default: the one
        ``config.json`` records (a training run's ``data.vocabulary``, a saved model's
        ``vocabulary``; ``harness.storage.checkpoint.read_vocabulary``).
      architecture: evaluate a cd checkpoint as nd or the reverse (PAPER.md 3.1).
      step: the checkpoint step (default: the latest).
      batch_size: rows per device call.
      max_inputs_length: context budget (ed encoder); decoders: row budget with
        ``max_targets_length`` (the study: 512 / 114).
      max_targets_length: see ``max_inputs_length``.
      max_gen_toks: default generation budget of ``generate_until``.
      mesh: ``"DATA,MODEL"`` (or a pair): shard the parameters over a device mesh by the training
        rules, the model axis splitting heads, MLP and vocabulary (-1 fills the devices); e.g.
        ``"1,8"`` spreads an 11B model over 8 GPUs. None: one device.
      context_eos: ed only: close each context with EOS, as lm-eval's Hugging Face backend does for
        T5 (its tokenizer appends EOS to the encoder input). The default (False) is the study's
        harness, which tokenized inputs without EOS (AO ``t5x/eval_harness.py``). Set it to compare
        with lm-eval's ``hf`` model on the same weights (``tests/test_eval_reference.py``).
      dtype: compute dtype, overriding the stored one (``"float32"`` scores a bfloat16 model in
        full precision); None keeps the checkpoint's.
      length_buckets: the padded lengths of the scorer's passes, as ints or ``"32/128/512"``
        (``harness.eval.scoring.Scorer``); None for its default. Fewer lengths compile fewer
        shapes and pad more.
      progress: show lm-eval's progress bars (tokenizing the requests); a grid, which prints one
        line per stage, turns them off.

    Raises:
      harness.storage.checkpoint.CheckpointError: a missing or invalid checkpoint.
      ValueError: an unknown vocabulary, a vocabulary larger than the model's, an architecture
        switch between ed and a decoder, or a bad argument; one line each.
    """

    def __init__(self, checkpoint: str, *, vocabulary: Optional[str] = None,
                 architecture: Optional[str] = None, step: Optional[int] = None,
                 batch_size: Union[int, str] = 8, max_inputs_length: int = 512,
                 max_targets_length: int = 114, max_gen_toks: int = 256,
                 context_eos: Union[bool, str] = False,
                 mesh: Union[None, str, Sequence[int]] = None, dtype: Optional[str] = None,
                 length_buckets: Union[None, str, Sequence[int]] = None,
                 progress: Union[bool, str] = True, **unused: Any) -> None:
        super().__init__()
        unknown = sorted(set(unused) - set(_IGNORED_ARGUMENTS))
        if unknown:
            raise ValueError(
                f"archobj model: unknown argument(s) {', '.join(unknown)}; allowed: checkpoint, "
                "vocabulary, architecture, step, batch_size, max_inputs_length, "
                "max_targets_length, max_gen_toks, context_eos, mesh, dtype, length_buckets, "
                "progress")
        batch_size = _as_int("batch_size", batch_size)
        max_gen_toks = _as_int("max_gen_toks", max_gen_toks)
        if step is not None:
            step = _as_int("step", step)
        directory = pathlib.Path(str(checkpoint)).expanduser()

        # Everything a user can get wrong is checked before any parameter is read.
        config = with_dtype(ckpt.read_config(directory), dtype)
        resolved = resolve_architecture(config, architecture)
        self.context_eos = _as_bool("context_eos", context_eos)
        self.progress = _as_bool("progress", progress)
        if self.context_eos and not resolved.is_encoder_decoder:
            raise ValueError(f"context_eos=True: only for encoder-decoders (a {resolved.architecture} "
                             "model reads context and continuation as one row)")
        if vocabulary is None:
            vocabulary = _run_vocabulary(directory)
        self.tokenizer: Tokenizer = load_tokenizer(_locate_vocabulary(vocabulary, directory))
        if self.tokenizer.vocab_size > config.vocab_size:
            raise ValueError(
                f"vocabulary {vocabulary!r} has {self.tokenizer.vocab_size} ids but the model in "
                f"{directory} has vocab_size={config.vocab_size}; pass the vocabulary it was "
                "trained with")

        self.scorer = Scorer.from_checkpoint(
            directory, step=step, architecture=architecture, batch_size=batch_size,
            max_inputs_length=max_inputs_length, max_targets_length=max_targets_length,
            mesh_shape=_mesh_shape(mesh), dtype=dtype,
            length_buckets=_length_buckets(length_buckets))
        self.checkpoint = str(directory)
        self.step = step
        self.vocabulary = vocabulary
        self.max_gen_toks = max_gen_toks
        self.batch_size = batch_size
        self.backend = "seq2seq" if resolved.is_encoder_decoder else "causal"

    # ---------------------------------------------------------------------------------------------
    # What lm-eval reads.
    # ---------------------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        """Tokens one row can hold: decoders context + continuation, ed the encoder's context."""
        if self.backend == "seq2seq":
            return self.scorer.max_inputs_length
        return self.scorer.row_budget

    @property
    def tokenizer_name(self) -> str:
        # Part of lm-eval's request-cache file names: keep it a plain word.
        return "archobj-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", str(self.vocabulary))

    def get_model_info(self) -> dict[str, Any]:
        """Recorded by lm-eval in the results' ``config``."""
        return {"archobj_checkpoint": self.checkpoint, "archobj_step": self.step,
                "archobj_architecture": self.scorer.architecture,
                "archobj_vocabulary": self.vocabulary, "archobj_dtype": self.scorer.config.dtype,
                "archobj_max_inputs_length": self.scorer.max_inputs_length,
                "archobj_max_targets_length": self.scorer.max_targets_length}

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None,
                   left_truncate_len: Optional[int] = None, **kwargs: Any) -> list[int]:
        """Token ids of ``string``. EOS is appended if ``add_special_tokens`` is True, or if it is
        None (lm-eval's call for a seq2seq context) and ``context_eos`` is set."""
        ids = self.tokenizer.encode(string)
        if add_special_tokens or (add_special_tokens is None and self.context_eos):
            ids.append(self.eot_token_id)
        if left_truncate_len:
            ids = ids[-left_truncate_len:]
        return ids

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def set_lengths(self, max_inputs_length: int, max_targets_length: int) -> None:
        """Changes the length budgets (one loaded model serves EAI-Eval's 512 / 114 and T0-Eval's
        1024 / 256); each new padded shape compiles once, as before."""
        self.scorer.max_inputs_length = _as_int("max_inputs_length", max_inputs_length)
        self.scorer.max_targets_length = _as_int("max_targets_length", max_targets_length)

    def score_tokens(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                     ) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), is_greedy)`` per ``(context, continuation)`` ids."""
        return self.scorer.loglikelihood(requests)

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False,
                      ) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not self.progress)

    def _loglikelihood_tokens(self, requests: Sequence[tuple[Any, list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any,
                              ) -> list[tuple[float, bool]]:
        results = self.scorer.loglikelihood([(context, continuation)
                                             for _, context, continuation in requests])
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False,
                              ) -> list[float]:
        windows: list[tuple[list[int], list[int]]] = []
        owners: list[int] = []
        for index, (string,) in enumerate(request.args for request in requests):
            for window in self._rolling_windows(self.tok_encode(string)):
                windows.append(window)
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (log_likelihood, _) in zip(owners, self.scorer.loglikelihood(windows)):
            totals[owner] += log_likelihood
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        results: list[Optional[str]] = [None] * len(requests)
        groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
        encoded: list[list[int]] = []
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            until, max_gen_toks = self._generation_arguments(gen_kwargs)
            groups.setdefault((until, max_gen_toks), []).append(index)
            encoded.append(self.tok_encode(context))
        for (until, max_gen_toks), indices in groups.items():
            stop = None
            if until:
                stop = lambda ids, until=until: any(  # noqa: E731
                    term in self.tokenizer.decode(ids) for term in until)
            generated = self.scorer.generate([encoded[i] for i in indices], max_gen_toks, stop)
            for index, ids in zip(indices, generated):
                text = self.tokenizer.decode(ids)
                for term in until:
                    text = text.split(term)[0]
                results[index] = text
                self.cache_hook.add_partial("generate_until", requests[index].args, text)
        return results  # type: ignore[return-value]

    # ---------------------------------------------------------------------------------------------

    def _rolling_windows(self, tokens: list[int]) -> list[tuple[list[int], list[int]]]:
        """``(context, continuation)`` windows that together score every token once."""
        if self.backend == "seq2seq":
            size = self.scorer.max_targets_length
            return [(tokens[:start] or [self.prefix_token_id], tokens[start:start + size])
                    for start in range(0, len(tokens), size)]
        # One token of context per window, as lm-eval's Hugging Face backend: a window of
        # max_seq_len predictions plus its context fills a row.
        return [lm_eval_utils.make_disjoint_window(window)
                for window in lm_eval_utils.get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id,
                    max_seq_len=self.scorer.row_budget - 1, context_len=1)]

    def _generation_arguments(self, gen_kwargs: Any) -> tuple[tuple[str, ...], int]:
        if not isinstance(gen_kwargs, dict):
            raise ValueError(f"generate_until: expected a dict of generation arguments, got "
                             f"{type(gen_kwargs).__name__}")
        if gen_kwargs.get("do_sample"):
            raise ValueError("generate_until: do_sample=True, but archobj generates greedily "
                             "only; set do_sample: false in the task")
        until = gen_kwargs.get("until", [])
        if isinstance(until, str):
            until = [until]
        if not isinstance(until, (list, tuple)) or not all(isinstance(u, str) for u in until):
            raise ValueError(f"generate_until: until={until!r} must be a string or a list of "
                             "strings")
        max_gen_toks = _as_int("max_gen_toks", gen_kwargs.get("max_gen_toks", self.max_gen_toks))
        return tuple(term for term in until if term), max_gen_toks


def _run_vocabulary(directory: pathlib.Path) -> str:
    """The vocabulary ``config.json`` records (``checkpoint.read_vocabulary``); one line if none."""
    vocabulary = ckpt.read_vocabulary(directory)
    if vocabulary is None:
        raise ValueError(
            f"{directory / ckpt.CONFIG_FILE}: records no vocabulary (a model saved without one, or "
            "converted without its tokenizer); pass vocabulary='byte', 't5' or the path of a "
            "SentencePiece .model")
    return vocabulary


def _locate_vocabulary(vocabulary: str, directory: pathlib.Path) -> str:
    """A relative SentencePiece path is looked up in the model directory first, then here."""
    if vocabulary in ("byte", "t5") or not isinstance(vocabulary, str):
        return vocabulary
    path = pathlib.Path(vocabulary).expanduser()
    if not path.is_absolute() and (directory / path).is_file():
        return str(directory / path)
    return vocabulary


def _mesh_shape(mesh: Union[None, str, Sequence[int]]) -> Optional[tuple[int, int]]:
    """``"4,2"`` / ``(4, 2)`` -> ``(4, 2)``; None stays None."""
    if mesh is None:
        return None
    parts = mesh.replace(" ", "").split(",") if isinstance(mesh, str) else list(mesh)
    try:
        shape = tuple(int(part) for part in parts)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 2:
        raise ValueError(f"mesh={mesh!r}: must be DATA,MODEL, e.g. '1,8' or '-1,2'")
    return shape  # type: ignore[return-value]


def _as_bool(name: str, value: Any) -> bool:
    """Booleans from lm-eval's model_args strings ("true", "False") as well as bools."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: must be true or false")
    return value


def _length_buckets(value: Union[None, str, Sequence[int]]) -> Optional[tuple[int, ...]]:
    """``"32/128/512"`` (lm-eval's model_args) or a sequence of ints; None stays None."""
    if value is None:
        return None
    parts = value.split("/") if isinstance(value, str) else list(value)
    buckets = tuple(_as_int("length_buckets", part) for part in parts)
    if not buckets:
        raise ValueError(f"length_buckets={value!r}: give at least one length, e.g. 32/128/512")
    return buckets


def _as_int(name: str, value: Any) -> int:
    """Integers from lm-eval's model_args strings ("8") as well as ints."""
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: must be a positive integer")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or value < 0 or (value == 0 and name != "step"):
        raise ValueError(f"{name}={value!r}: must be a positive integer"
                         + (" ('auto' batch sizes are not supported)"
                            if name == "batch_size" else ""))
    return value
