"""T0-Eval: the study's 11 held-out datasets scored by rank classification (PAPER.md 3.2, 3.2b).

Every PromptSource template with ``original_task: true`` of the 11 datasets is one prompt-task
(116 in all, the names of PAPER.md 3.2, checked against the installed promptsource 0.2.3 by
``eval_templates``). Each validation example is rendered with the template, and **rank
classification** scores it exactly as T0/t5 did ([T0] ``add_task`` + ``t5.data.preprocessors.
rank_classification`` + ``t5.evaluation.metrics.rank_classification``):

- one scoring row per answer choice (``template.get_answer_choices_list(example)``), all with the
  rendered input;
- tokens as T0's features: inputs **without** EOS, targets (the choice) **with** EOS appended;
- lengths 1024 / 256 (PAPER.md 3.2), truncated as seqio trims: the first tokens are kept. A target
  that would pass 256 tokens keeps its first 255 tokens and EOS stays last (seqio's
  ``append_eos_after_trim``). T0 used ``append_eos`` then trimming, which would drop the EOS of
  such a target; answer choices of these datasets are expected to be far shorter than 256 tokens,
  and every truncation is counted in the results, so a difference would show;
- score = the sum of the target's log-probs (``lm.score_tokens``); prediction = argmax over the
  choices, ties to the first (``np.argmax``);
- accuracy per prompt = the fraction of scored examples whose predicted choice equals the rendered
  target (the "gold" index is the first choice equal to it).

Examples are skipped, and counted per prompt, when the template renders no (input, target) pair
for them (T0 filtered these out too, e.g. COPA's effect-only templates on "cause" questions) or
when the rendered target is not among the answer choices ("no gold"; t5's metric would have counted
such an example as wrong; the real validation splits are labelled, so this is not expected there).

Aggregation (PAPER.md 3.2 / PAPER §3.4): the **median** of the per-prompt accuracies of a dataset,
then the unweighted **mean** over the 11 datasets. Per-prompt accuracies stay in the raw results.
Accuracies are fractions in [0, 1] (t5 printed percentages).

Determinism: hellaswag's "Randomized prompts template" draws its instruction with Python's global
``random`` (promptsource's ``choice`` filter). T0 left it unseeded; here every render is seeded with
``prompt_seed(dataset, template, index)`` and the global RNG state is restored afterwards.

Data (one ``--data-dir DIR`` serves this suite and EAI-Eval): ``DIR/<hub path>/<config or
"default">/<split>.jsonl``, one JSON object per line in the Hugging Face dataset's own schema, with
the hub paths lm-eval 0.4.13 reads (``aps/super_glue``, ``facebook/anli``, ``Rowan/hellaswag``,
``allenai/winogrande``, ``LSDSem/story_cloze``), e.g. ``DIR/aps/super_glue/cb/validation.jsonl``,
``DIR/facebook/anli/default/dev_r1.jsonl``. ``export`` writes that layout on a machine with network
(``export_split`` writes any loaded split). Without ``data_dir`` the splits are read from the
Hugging Face hub (``datasets.load_dataset``); ``LSDSem/story_cloze`` needs its manual download
there (``load_kwargs={"story_cloze": {"data_dir": ...}}``). The project's fixture (synthetic
examples, ``harness.eval.t0_eval_fixture.make_fixture``) lies in ``FIXTURE_DIR``.

This module imports neither TensorFlow nor seqio; promptsource and datasets are imported lazily.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import random
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from objectives.t0 import INPUTS_LENGTH, TARGETS_LENGTH, render_example, task_clean

if TYPE_CHECKING:
    from promptsource.templates import Template

logger = logging.getLogger(__name__)

SUITE = "t0"
FIXTURE_DIR = Path(__file__).resolve().parent / "suites" / "fixtures" / "t0"


class T0EvalError(ValueError):
    """Bad T0-Eval input: an unknown dataset, missing or malformed data, an unusable model."""


# -------------------------------------------------------------------------------------------------
# The suite
# -------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class T0EvalDataset:
    """One of the 11 T0-Eval datasets.

    Attributes:
      name: the suite's name (``anli_r1``, ``cb``, ...), what ``tasks`` selects.
      title: display name.
      hub_path, hub_config, split: what ``datasets.load_dataset(hub_path, hub_config,
        split=split)`` reads (the validation split; ANLI's ``dev_r<k>``).
      ps_name, ps_subset: promptsource's dataset and subset (the templates' folder).
      random_baseline: chance accuracy (AO ``plot_t5x_results_vs_t0.py::TASKS``).
      templates: the prompt-task names of PAPER.md 3.2 (promptsource names after ``task_clean``).
      fields: the Hugging Face schema's fields (every local example must have them).
      round_suffix: T0 named ANLI's tasks per round, ``anli_<template>_r1``.
    """

    name: str
    title: str
    hub_path: str
    hub_config: str | None
    split: str
    ps_name: str
    ps_subset: str | None
    random_baseline: float
    templates: tuple[str, ...]
    fields: tuple[str, ...]
    round_suffix: str = ""

    def data_path(self, data_dir: str | os.PathLike) -> Path:
        """``data_dir/<hub path>/<config or "default">/<split>.jsonl``."""
        directory = Path(data_dir) / self.hub_path / (self.hub_config or "default")
        return directory / f"{self.split}.jsonl"

    def task_name(self, template: str) -> str:
        """T0's seqio task name of a prompt, e.g. ``super_glue_cb_GPT_3_style_score_eval``."""
        subset = f"_{self.ps_subset}_" if self.ps_subset else "_"
        return task_clean(self.ps_name + subset + template) + self.round_suffix + "_score_eval"


_NLI = ("GPT_3_style", "MNLI_crowdsource", "always_sometimes_never",
        "based_on_the_previous_passage", "can_we_infer", "claim_true_false_inconclusive",
        "consider_always_sometimes_never", "does_it_follow_that", "does_this_imply",
        "guaranteed_true", "guaranteed_possible_impossible", "justified_in_saying", "must_be_true",
        "should_assume", "take_the_following_as_truth")
_RTE = ("GPT_3_style", "MNLI_crowdsource", "based_on_the_previous_passage", "can_we_infer",
        "does_it_follow_that", "does_this_imply", "guaranteed_true", "justified_in_saying",
        "must_be_true", "should_assume")
_ANLI_FIELDS = ("uid", "premise", "hypothesis", "label", "reason")


def _anli(k: int) -> T0EvalDataset:
    return T0EvalDataset(f"anli_r{k}", f"ANLI R{k}", "facebook/anli", None, f"dev_r{k}", "anli",
                         None, 1 / 3, _NLI, _ANLI_FIELDS, round_suffix=f"_r{k}")


# PAPER.md 3.2, in its order: NLI, sentence completion, coreference, word sense.
T0_EVAL_DATASETS: tuple[T0EvalDataset, ...] = (
    _anli(1), _anli(2), _anli(3),
    T0EvalDataset("cb", "CB", "aps/super_glue", "cb", "validation", "super_glue", "cb", 1 / 3,
                  _NLI, ("premise", "hypothesis", "idx", "label")),
    T0EvalDataset("rte", "RTE", "aps/super_glue", "rte", "validation", "super_glue", "rte", 0.5,
                  _RTE, ("premise", "hypothesis", "idx", "label")),
    T0EvalDataset("copa", "COPA", "aps/super_glue", "copa", "validation", "super_glue", "copa", 0.5,
                  ("C1_or_C2_premise_so_because_", "best_option", "cause_effect", "choose",
                   "exercise", "i_am_hesitating", "more_likely", "plausible_alternatives",
                   "_As_a_result_C1_or_C2_", "_What_could_happen_next_C1_or_C2_",
                   "_which_may_be_caused_by", "_why_C1_or_C2"),
                  ("premise", "choice1", "choice2", "question", "idx", "label")),
    T0EvalDataset("hellaswag", "HellaSwag", "Rowan/hellaswag", None, "validation", "hellaswag",
                  None, 0.25,
                  ("Predict_ending_with_hint", "Randomized_prompts_template", "complete_first_then",
                   "if_begins_how_continues"),
                  ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id",
                   "split", "split_type", "label")),
    T0EvalDataset("story_cloze", "StoryCloze", "LSDSem/story_cloze", "2016", "validation",
                  "story_cloze", "2016", 0.5,
                  ("Answer_Given_options", "Choose_Story_Ending", "Movie_What_Happens_Next",
                   "Novel_Correct_Ending", "Story_Continuation_and_Options"),
                  ("story_id", "input_sentence_1", "input_sentence_2", "input_sentence_3",
                   "input_sentence_4", "sentence_quiz1", "sentence_quiz2", "answer_right_ending")),
    T0EvalDataset("wsc", "WSC", "aps/super_glue", "wsc.fixed", "validation", "super_glue",
                  "wsc.fixed", 0.5,
                  ("GPT_3_Style", "I_think_they_mean", "Who_or_what_is_are", "by_p_they_mean",
                   "does_p_stand_for", "does_the_pronoun_refer_to", "in_other_words", "p_is_are_r",
                   "replaced_with", "the_pronoun_refers_to"),
                  ("text", "span1_index", "span2_index", "span1_text", "span2_text", "idx",
                   "label")),
    T0EvalDataset("winogrande", "Winogrande", "allenai/winogrande", "winogrande_xl", "validation",
                  "winogrande", "winogrande_xl", 0.5,
                  ("Replace", "does_underscore_refer_to", "fill_in_the_blank", "stand_for",
                   "underscore_refer_to"),
                  ("sentence", "option1", "option2", "answer")),
    T0EvalDataset("wic", "WiC", "aps/super_glue", "wic", "validation", "super_glue", "wic", 0.5,
                  ("GPT_3_prompt", "GPT_3_prompt_with_label", "affirmation_true_or_false",
                   "grammar_homework", "polysemous", "question_context", "question_context_meaning",
                   "question_context_meaning_with_label", "same_sense", "similar_sense"),
                  ("word", "sentence1", "sentence2", "start1", "start2", "end1", "end2", "idx",
                   "label")),
)
T0_EVAL_TASKS: tuple[str, ...] = tuple(d.name for d in T0_EVAL_DATASETS)
# Group names accepted in ``tasks``.
TASK_GROUPS: dict[str, tuple[str, ...]] = {"anli": ("anli_r1", "anli_r2", "anli_r3")}
NUM_PROMPTS = sum(len(d.templates) for d in T0_EVAL_DATASETS)  # 116
# PAPER.md 3.1/3.2: the T0-Eval random baseline, 41.7%.
RANDOM_BASELINE_MEAN = statistics.fmean(d.random_baseline for d in T0_EVAL_DATASETS)


def find_dataset(name: str) -> T0EvalDataset:
    """The suite's dataset called ``name``; one-line error listing the valid names otherwise."""
    for dataset in T0_EVAL_DATASETS:
        if dataset.name == name:
            return dataset
    raise T0EvalError(f"T0-Eval dataset {name!r} is unknown; valid names: "
                      f"{', '.join(T0_EVAL_TASKS + tuple(TASK_GROUPS))}")


def resolve_tasks(tasks: str | Sequence[str] | None) -> list[T0EvalDataset]:
    """Datasets selected by name (a list or a comma-separated string; ``anli`` = its 3 rounds).

    None selects all 11. The result is in suite order, without repeats.

    Raises:
      T0EvalError: an unknown name (the message lists the valid ones) or an empty selection.
    """
    if tasks is None:
        return list(T0_EVAL_DATASETS)
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",")]
    wanted: set[str] = set()
    for task in tasks:
        task = str(task).strip()
        wanted.update(TASK_GROUPS[task] if task in TASK_GROUPS else (find_dataset(task).name,))
    if not wanted:
        raise T0EvalError(f"tasks={list(tasks)!r}: no dataset selected; valid names: "
                          f"{', '.join(T0_EVAL_TASKS + tuple(TASK_GROUPS))}")
    return [d for d in T0_EVAL_DATASETS if d.name in wanted]


def eval_templates(dataset: T0EvalDataset | str) -> list[tuple[str, "Template"]]:
    """The dataset's prompt-tasks: promptsource templates with ``original_task: true``.

    Returns:
      ``[(prompt name, Template)]`` sorted by prompt name, where the prompt name is the template's
      name after ``task_clean`` (PAPER.md 3.2's spelling).

    Raises:
      T0EvalError: the installed promptsource does not give exactly PAPER.md 3.2's names (the
        study used promptsource's original-task templates; 0.2.3 matches, checked).
    """
    if isinstance(dataset, str):
        dataset = find_dataset(dataset)
    found = dict(_original_task_templates(dataset.ps_name, dataset.ps_subset))
    if sorted(found) != sorted(dataset.templates):
        raise T0EvalError(
            f"promptsource templates of {dataset.ps_name}/{dataset.ps_subset or ''}: original-task "
            f"prompts {sorted(found)} differ from PAPER.md 3.2's {sorted(dataset.templates)}; "
            "install promptsource==0.2.3")
    return sorted(found.items())


@functools.lru_cache(maxsize=None)
def _original_task_templates(name: str, subset: str | None) -> tuple[tuple[str, "Template"], ...]:
    """promptsource's original-task templates of a dataset, by cleaned name (YAML read once)."""
    from promptsource.templates import DatasetTemplates  # lazy: ~1 s

    collection = DatasetTemplates(name, subset)
    found = []
    for template_name in collection.all_template_names:
        template = collection[template_name]
        if template.metadata is not None and template.metadata.original_task:
            found.append((task_clean(template_name), template))
    return tuple(found)


# -------------------------------------------------------------------------------------------------
# Rendering and rows
# -------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RenderedPrompt:
    """One example under one template: the input, the target, the choices and the gold index."""

    inputs: str
    target: str
    choices: tuple[str, ...]
    gold: int | None  # index of the first choice equal to the target; None when none is


def prompt_seed(dataset: str, prompt: str, index: int) -> str:
    """Seed of Python's ``random`` while rendering example ``index`` of a prompt (module doc)."""
    return f"t0-eval/{dataset}/{prompt}/{index}"


def render_prompt(template: "Template", example: Mapping[str, Any],
                  seed: str | None = None) -> RenderedPrompt | None:
    """Renders one example for rank classification, as T0's ``apply_template`` did.

    Args:
      template: a promptsource template with answer choices.
      example: one raw example in the Hugging Face schema.
      seed: seeds Python's global ``random`` for the render (restored afterwards); None leaves it.

    Returns:
      The rendered prompt, or None when the template renders no (input, target) pair or no answer
      choices for this example.
    """
    from promptsource.utils import removeHyphen

    state = random.getstate()
    try:
        if seed is not None:
            random.seed(seed)
        rendered = render_example(template, example)
    finally:
        random.setstate(state)
    if rendered is None:
        return None
    choices = template.get_answer_choices_list(removeHyphen(dict(example)))
    if not choices:
        return None
    inputs, target = rendered
    # t5's rank_classification compared the choices with the stripped target.
    target = target.strip()
    gold = choices.index(target) if target in choices else None
    return RenderedPrompt(inputs, target, tuple(choices), gold)


# id(promptsource's Jinja environment) -> {source: compiled template}, kept across evaluations
# (the 116 prompts have ~160 distinct sources).
_COMPILED: dict[int, dict[str, Any]] = {}


@contextlib.contextmanager
def _compiled_once() -> Iterator[None]:
    """Within the block, promptsource compiles each Jinja source once instead of at every render.

    ``Template.apply`` and ``get_answer_choices_list`` call ``env.from_string`` on every example
    (~7 ms each here, about 3 per render: ~40 min for T0-Eval's ~115k renders). Rendering a
    compiled template again gives the same text, so the block memoises ``from_string`` on
    promptsource's environment and restores it on exit; promptsource's own code still renders.
    """
    from promptsource import templates as ps_templates

    env = ps_templates.env
    if "from_string" in vars(env):  # already inside such a block
        yield
        return
    compile_source = env.from_string
    cache = _COMPILED.setdefault(id(env), {})

    def from_string(source, *args, **kwargs):
        if args or kwargs or not isinstance(source, str):
            return compile_source(source, *args, **kwargs)
        if source not in cache:
            cache[source] = compile_source(source)
        return cache[source]

    env.from_string = from_string
    try:
        yield
    finally:
        del env.from_string


def encode_row(input_ids: Sequence[int], target_ids: Sequence[int], eos_id: int,
               inputs_length: int = INPUTS_LENGTH, targets_length: int = TARGETS_LENGTH,
               ) -> tuple[list[int], list[int]]:
    """T0's features for one (input, choice): inputs without EOS, targets with EOS, trimmed.

    Inputs keep their first ``inputs_length`` tokens; targets their first ``targets_length - 1``
    tokens and then EOS (see the module doc for why EOS stays).
    """
    return _trim_inputs(input_ids, inputs_length), _trim_targets(target_ids, eos_id, targets_length)


def _trim_inputs(input_ids: Sequence[int], inputs_length: int) -> list[int]:
    return list(input_ids[:inputs_length])


def _trim_targets(target_ids: Sequence[int], eos_id: int, targets_length: int) -> list[int]:
    return list(target_ids[:targets_length - 1]) + [eos_id]


# -------------------------------------------------------------------------------------------------
# Data
# -------------------------------------------------------------------------------------------------

def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise T0EvalError(f"limit={limit!r}: must be a positive number of examples per dataset, "
                          "or None for all")


def load_examples(dataset: T0EvalDataset, data_dir: str | os.PathLike | None = None,
                  limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` examples (all by default) of the dataset's validation split.

    With ``data_dir``: read ``dataset.data_path(data_dir)`` (and nothing else). Without: read the
    Hugging Face hub with ``datasets.load_dataset`` (or its cache).

    Raises:
      T0EvalError: the local file is missing or malformed (``file:line``) or lacks a schema field;
        the hub cannot be read (offline, the message says how to provide the file).
    """
    _check_limit(limit)
    if data_dir is None:
        examples = _load_from_hub(dataset, limit)
        origin = f"{dataset.hub_path}/{dataset.hub_config or 'default'}:{dataset.split}"
    else:
        path = dataset.data_path(data_dir)
        if not path.is_file():
            raise T0EvalError(
                f"T0-Eval dataset {dataset.name}: {path} does not exist; write it on a machine "
                f"with network with harness.eval.t0_eval.export({str(data_dir)!r}) (one JSON object "
                f"per line in the Hugging Face schema of {dataset.hub_path} "
                f"{dataset.hub_config or ''} split {dataset.split})")
        examples = _read_jsonl(path, limit)
        origin = str(path)
    for number, example in enumerate(examples, start=1):
        missing = [f for f in dataset.fields if f not in example]
        if missing:
            raise T0EvalError(f"{origin}: example {number} lacks fields {missing}; expected the "
                              f"Hugging Face schema {list(dataset.fields)}")
    return examples


def _read_jsonl(path: Path, limit: int | None) -> list[dict[str, Any]]:
    examples = []
    try:
        with open(path, encoding="utf-8") as stream:
            for line_number, line in enumerate(stream, start=1):
                if limit is not None and len(examples) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise T0EvalError(f"{path}:{line_number}: malformed JSON ({error.msg}, column "
                                      f"{error.colno})") from None
                if not isinstance(record, dict):
                    raise T0EvalError(f"{path}:{line_number}: expected a JSON object, got "
                                      f"{type(record).__name__}")
                examples.append(record)
    except (OSError, UnicodeDecodeError) as error:
        raise T0EvalError(f"{path}: cannot read as UTF-8 text ({error})") from error
    if not examples:
        raise T0EvalError(f"{path}: no examples; expected one JSON object per line")
    return examples


def _load_from_hub(dataset: T0EvalDataset, limit: int | None,
                   load_kwargs: Mapping[str, Any] | None = None):
    split = dataset.split if limit is None else f"{dataset.split}[:{limit}]"
    try:
        import datasets  # lazy: heavy, and only for reading the hub

        loaded = datasets.load_dataset(dataset.hub_path, dataset.hub_config, split=split,
                                       **dict(load_kwargs or {}))
    except Exception as error:  # noqa: BLE001 - any failure becomes one actionable line
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise T0EvalError(
            f"T0-Eval dataset {dataset.name}: cannot load {dataset.hub_path} "
            f"{dataset.hub_config or ''} split {dataset.split} from the Hugging Face hub "
            f"({type(error).__name__}: {reason}); offline, pass a data_dir (--data-dir DIR) "
            f"holding {dataset.data_path('DIR')}, written by harness.eval.t0_eval.export") from None
    return [dict(example) for example in loaded]


def export_split(examples: Iterable[Mapping[str, Any]], data_dir: str | os.PathLike,
                 dataset: T0EvalDataset | str, *, overwrite: bool = False) -> Path:
    """Writes one split (a loaded ``datasets.Dataset`` or any iterable of examples) as JSONL.

    The file is ``dataset.data_path(data_dir)``; it is written beside its final name and renamed at
    the end, so a failure never leaves a partial file where ``load_examples`` would read it.

    Raises:
      T0EvalError: the file exists and ``overwrite`` is False.
    """
    if isinstance(dataset, str):
        dataset = find_dataset(dataset)
    path = dataset.data_path(data_dir)
    if path.exists() and not overwrite:
        raise T0EvalError(f"{path}: exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as stream:
            for example in examples:
                stream.write(json.dumps(dict(example), ensure_ascii=False) + "\n")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def export(data_dir: str | os.PathLike, tasks: str | Sequence[str] | None = None, *,
           overwrite: bool = False,
           load_kwargs: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, str]:
    """Reads the selected validation splits from the Hugging Face hub into the offline layout.

    Run it on a machine with network; copy ``data_dir`` to the offline one. ``load_kwargs`` maps a
    dataset name to extra ``load_dataset`` arguments (``{"story_cloze": {"data_dir": ...}}``: its
    hub copy needs the manually downloaded CSVs).

    Returns:
      dataset name -> path written.
    """
    selected = resolve_tasks(tasks)
    load_kwargs = dict(load_kwargs or {})
    written = {}
    for dataset in selected:
        examples = _load_from_hub(dataset, None, load_kwargs.get(dataset.name))
        written[dataset.name] = str(export_split(examples, data_dir, dataset, overwrite=overwrite))
    return written


# -------------------------------------------------------------------------------------------------
# Evaluation
# -------------------------------------------------------------------------------------------------

def _check_lm(lm: Any) -> None:
    missing = [a for a in ("score_tokens", "tok_encode", "eot_token_id") if not hasattr(lm, a)]
    if missing:
        raise T0EvalError(f"lm={type(lm).__name__}: lacks {missing}; T0-Eval needs "
                          "score_tokens(requests), tok_encode(text) and eot_token_id "
                          "(harness.eval.lm_eval_adapter.ArchobjLM has them)")


def _check_lengths(lm: Any, inputs_length: int, targets_length: int) -> None:
    """The model must not truncate T0's rows further (ArchobjLM defaults to EAI's 512 / 114)."""
    for field, value in (("inputs_length", inputs_length), ("targets_length", targets_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise T0EvalError(f"{field}={value!r}: must be an integer >= 2")
    scorer = getattr(lm, "scorer", None)
    limits = (getattr(scorer, "max_inputs_length", None),
              getattr(scorer, "max_targets_length", None))
    if None in limits:
        return
    if limits[0] < inputs_length or limits[1] < targets_length:
        raise T0EvalError(
            f"lm scores at most {limits[0]} input / {limits[1]} target tokens, T0-Eval's rows have "
            f"up to {inputs_length} / {targets_length}; build the model with max_inputs_length="
            f"{inputs_length}, max_targets_length={targets_length} (or pass shorter inputs_length/"
            "targets_length to evaluate)")


def prompt_subset(prompts: Sequence[Any], max_prompts: int | None) -> list[Any]:
    """At most ``max_prompts`` of a dataset's prompts, spread evenly over its sorted list (always
    the first and, from two on, the last); all of them when None or when there are no more."""
    if max_prompts is None or len(prompts) <= max_prompts:
        return list(prompts)
    if max_prompts == 1:
        return [prompts[0]]
    step = (len(prompts) - 1) / (max_prompts - 1)
    return [prompts[round(i * step)] for i in range(max_prompts)]


def evaluate(lm: Any, *, data_dir: str | os.PathLike | None = None,
             tasks: str | Sequence[str] | None = None, limit: int | None = None,
             inputs_length: int = INPUTS_LENGTH, targets_length: int = TARGETS_LENGTH,
             max_prompts: int | None = None) -> dict[str, Any]:
    """Scores T0-Eval by rank classification with ``lm``.

    Every row of a dataset (all its prompts, examples and choices) goes to ONE
    ``lm.score_tokens`` call, so the scorer can sort and bucket them.

    Args:
      lm: an object with ``tok_encode(text) -> list[int]`` (no special tokens), ``eot_token_id``
        and ``score_tokens([(input ids, target ids)]) -> [(sum log-prob, is_greedy)]``:
        ``harness.eval.lm_eval_adapter.ArchobjLM`` built with ``max_inputs_length >= inputs_length``
        and ``max_targets_length >= targets_length`` (checked when ``lm.scorer`` has them).
      data_dir: the offline layout (see the module doc); None reads the Hugging Face hub.
      tasks: dataset names (``T0_EVAL_TASKS``, or ``anli``); None for all 11.
      limit: the first ``limit`` examples of each dataset; None for all.
      inputs_length, targets_length: the feature lengths (the study's 1024 / 256).
      max_prompts: score at most this many prompts per dataset (``prompt_subset``), for budgets
        that cannot pay for all 116; None (the study) scores every prompt. Recorded in the
        results' config.

    Returns:
      JSON-serialisable raw results (``summarize`` reads them)::

        {"suite": "t0", "config": {tasks, limit, data_dir, lengths, promptsource version},
         "datasets": {name: {"num_examples", "num_rows",
                             "num_truncated_inputs" (prompt x example renders cut to length),
                             "num_truncated_targets" (rows whose choice was cut),
                             "random_baseline", "median_accuracy", "seconds", ...,
                             "prompts": {prompt: {"template", "task" (T0's task name),
                                                  "accuracy" (None if nothing scored),
                                                  "num_correct", "num_scored",
                                                  "examples" (indices of the scored examples
                                                  in the split), "correct" (0/1 for each),
                                                  "num_not_rendered", "num_no_gold"}}}},
         "aggregate": {"mean_accuracy", "random_baseline", "num_datasets", "complete"}}

    Raises:
      T0EvalError: an unknown task, a bad limit or length, missing or malformed data, an
        unusable ``lm`` (or one that would truncate the rows further).
    """
    selected = resolve_tasks(tasks)
    _check_limit(limit)
    if max_prompts is not None and (isinstance(max_prompts, bool) or not isinstance(
            max_prompts, int) or max_prompts < 1):
        raise T0EvalError(f"max_prompts={max_prompts!r}: a positive number of prompts per "
                          "dataset, or None for all of them")
    _check_lm(lm)
    _check_lengths(lm, inputs_length, targets_length)
    # Read every selected dataset first, so that missing data fails before any scoring.
    examples = {d.name: load_examples(d, data_dir, limit) for d in selected}
    results: dict[str, Any] = {}
    for dataset in selected:
        results[dataset.name] = _evaluate_dataset(lm, dataset, examples[dataset.name],
                                                  inputs_length, targets_length, max_prompts)
    medians = {name: r["median_accuracy"] for name, r in results.items()}
    return {
        "suite": SUITE,
        "config": {"tasks": [d.name for d in selected], "limit": limit,
                   "data_dir": None if data_dir is None else str(data_dir),
                   "inputs_length": inputs_length, "targets_length": targets_length,
                   "max_prompts": max_prompts, "promptsource": _promptsource_version()},
        "datasets": results,
        "aggregate": _aggregate_medians(medians),
    }


def _promptsource_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("promptsource")
    except metadata.PackageNotFoundError:
        return None


def _evaluate_dataset(lm: Any, dataset: T0EvalDataset, examples: list[dict[str, Any]],
                      inputs_length: int, targets_length: int,
                      max_prompts: int | None = None) -> dict[str, Any]:
    start_time = time.perf_counter()
    eos = int(lm.eot_token_id)
    # Choices repeat ("Yes", "No"): tokenized once, and their rows share one target list. The
    # rows of one rendered input share one input list (the scorer only reads them).
    targets_of: dict[str, tuple[list[int], bool]] = {}

    def target_row(choice: str) -> tuple[list[int], bool]:
        if choice not in targets_of:
            ids = list(lm.tok_encode(choice))
            targets_of[choice] = (_trim_targets(ids, eos, targets_length),
                                  len(ids) + 1 > targets_length)
        return targets_of[choice]

    rows: list[tuple[list[int], list[int]]] = []
    plans = []  # per prompt: (name, template name, [(example index, first row, choices, golds)], counts)
    truncated_inputs = truncated_targets = 0
    with _compiled_once():
        for prompt, template in prompt_subset(eval_templates(dataset), max_prompts):
            entries, not_rendered, no_gold = [], 0, 0
            for index, example in enumerate(examples):
                try:
                    rendered = render_prompt(template, example,
                                             prompt_seed(dataset.name, prompt, index))
                except Exception as error:  # noqa: BLE001 - a bad example, named in one line
                    reason = (str(error).strip().splitlines() or [""])[0][:200]
                    raise T0EvalError(
                        f"T0-Eval dataset {dataset.name}: example {index + 1} does not render with "
                        f"prompt {prompt!r} ({type(error).__name__}: {reason}); check it follows "
                        f"the Hugging Face schema {list(dataset.fields)}") from None
                if rendered is None:
                    not_rendered += 1
                    continue
                if rendered.gold is None:
                    no_gold += 1
                    continue
                input_ids = list(lm.tok_encode(rendered.inputs))
                truncated_inputs += len(input_ids) > inputs_length
                inputs = _trim_inputs(input_ids, inputs_length)
                # Correct = the predicted choice equals the target (as t5's metric: a repeated
                # choice that equals it counts too).
                golds = {i for i, c in enumerate(rendered.choices) if c == rendered.target}
                entries.append((index, len(rows), len(rendered.choices), golds))
                for choice in rendered.choices:
                    targets, truncated = target_row(choice)
                    truncated_targets += truncated
                    rows.append((inputs, targets))
            plans.append((prompt, template.name, entries, not_rendered, no_gold))

    scores = [float(s[0]) for s in lm.score_tokens(rows)] if rows else []
    if len(scores) != len(rows):
        raise T0EvalError(f"lm.score_tokens returned {len(scores)} scores for {len(rows)} rows")

    prompts = {}
    for prompt, template_name, entries, not_rendered, no_gold in plans:
        # Per example, 0/1, with the example's index in the split: what a bootstrap resamples, and
        # what pairs the same example across prompts and across checkpoints (analysis/).
        hits, loglikelihoods, gold_indices = [], [], []
        for _, first, count, golds in entries:
            choice_scores = scores[first:first + count]
            prediction = max(range(count), key=lambda i: (choice_scores[i], -i))  # ties: first
            hits.append(int(prediction in golds))
            loglikelihoods.append([round(score, 4) for score in choice_scores])
            gold_indices.append(min(golds))
        correct = sum(hits)
        prompts[prompt] = {
            "template": template_name,
            "task": dataset.task_name(prompt),
            "accuracy": correct / len(entries) if entries else None,
            "num_correct": correct,
            "num_scored": len(entries),
            "num_not_rendered": not_rendered,
            "num_no_gold": no_gold,
            "examples": [entry[0] for entry in entries],
            "correct": hits,
            # Per example, log p(choice | input) of each answer choice in the template's order
            # (what rank classification compared) and the first correct choice's index:
            # analysis/choice_prior.py reads them.
            "choice_loglikelihoods": loglikelihoods,
            "gold": gold_indices,
        }
    accuracies = [p["accuracy"] for p in prompts.values() if p["accuracy"] is not None]
    seconds = time.perf_counter() - start_time
    logger.info("T0-Eval %s: %d prompts, %d rows scored in %.1f s", dataset.name, len(prompts),
                len(rows), seconds)
    return {
        "title": dataset.title,
        "hub_path": dataset.hub_path,
        "hub_config": dataset.hub_config,
        "split": dataset.split,
        "num_examples": len(examples),
        "num_rows": len(rows),
        "num_truncated_inputs": truncated_inputs,
        "num_truncated_targets": truncated_targets,
        "random_baseline": dataset.random_baseline,
        "prompts": prompts,
        "median_accuracy": statistics.median(accuracies) if accuracies else None,
        "seconds": round(seconds, 3),
    }


# -------------------------------------------------------------------------------------------------
# Aggregation and summary
# -------------------------------------------------------------------------------------------------

def _aggregate_medians(medians: Mapping[str, float | None]) -> dict[str, Any]:
    scored = {name: m for name, m in medians.items() if m is not None}
    baseline = [find_dataset(name).random_baseline for name in scored]
    return {
        "mean_accuracy": statistics.fmean(scored.values()) if scored else None,
        "random_baseline": statistics.fmean(baseline) if baseline else None,
        "num_datasets": len(scored),
        "complete": sorted(scored) == sorted(T0_EVAL_TASKS),
    }


def aggregate(per_prompt: Mapping[str, Mapping[str, float | None]]) -> dict[str, Any]:
    """PAPER §3.4's T0-Eval score from per-prompt accuracies.

    Args:
      per_prompt: dataset name -> {prompt name -> accuracy, or None when nothing was scored}.

    Returns:
      ``{"medians": {dataset: median over its prompts (None if none scored)}, "mean_accuracy":
      mean of the medians, "random_baseline": mean of those datasets' baselines, "num_datasets",
      "complete": all 11 datasets scored}``.
    """
    medians = {}
    for name, accuracies in per_prompt.items():
        find_dataset(name)
        values = [a for a in accuracies.values() if a is not None]
        medians[name] = statistics.median(values) if values else None
    return {"medians": medians, **_aggregate_medians(medians)}


def summarize(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per dataset and a final "T0-Eval" row, from ``evaluate``'s results (or its JSON).

    Each dataset row: ``dataset``, ``title``, ``prompts`` (scored / total), ``examples``,
    ``accuracy`` (median over prompts), ``min``, ``max`` (the spread over prompts),
    ``random_baseline``. The last row's ``accuracy`` is the mean of the medians and its
    ``random_baseline`` the mean of those datasets' baselines (41.7% over all 11).
    """
    rows = []
    per_prompt = {}
    for name, result in results["datasets"].items():
        accuracies = {p: v["accuracy"] for p, v in result["prompts"].items()}
        per_prompt[name] = accuracies
        scored = [a for a in accuracies.values() if a is not None]
        rows.append({
            "dataset": name,
            "title": result.get("title", name),
            "prompts": f"{len(scored)}/{len(accuracies)}",
            "examples": result["num_examples"],
            "accuracy": statistics.median(scored) if scored else None,
            "min": min(scored) if scored else None,
            "max": max(scored) if scored else None,
            "random_baseline": find_dataset(name).random_baseline,
        })
    total = aggregate(per_prompt)
    label = "T0-Eval" if total["complete"] else f"T0-Eval ({total['num_datasets']} of 11)"
    rows.append({"dataset": "t0_eval", "title": label, "prompts": "",
                 "examples": sum(r["examples"] for r in rows), "accuracy": total["mean_accuracy"],
                 "min": None, "max": None, "random_baseline": total["random_baseline"]})
    return rows


def format_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """``summarize``'s rows as a fixed-width text table (accuracies in %)."""
    def pct(value):
        return "" if value is None else f"{100 * value:.1f}"

    header = ("dataset", "prompts", "examples", "median %", "min %", "max %", "random %")
    lines = [(r["title"], r["prompts"], str(r["examples"]), pct(r["accuracy"]), pct(r["min"]),
              pct(r["max"]), pct(r["random_baseline"])) for r in rows]
    widths = [max(len(x) for x in column) for column in zip(header, *lines)]
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in
                     enumerate(zip(line, widths))) for line in (header, *lines)]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
