"""The T0 multitask-finetuning mixture (P3): datasets, templates, mixing rates, seqio registration.

PAPER.md 3.3: the study finetunes every pretrained model on T0's training mixture, ``d4_train`` in
promptsource's ``seqio_tasks/tasks.py`` (the same as ``t0_train`` in [T0] ``t0/seqio_tasks/tasks.py``):
every PromptSource template of the 38 "BASE" training datasets of [T0] ``t0/datasets.csv``, minus a
blacklist, mixed in proportion to the number of examples with a cap of 500,000 examples per dataset.

This module holds, in one place:

- ``T0_TRAIN_DATASETS``: the 38 datasets (category, Hugging Face name, subset, and the ``train_size``
  column of T0's ``datasets.csv`` that T0 computed its rates from);
- ``TEMPLATE_BLACKLIST`` and ``t0_templates``: which promptsource templates make prompted tasks;
- ``mixing_rate`` / ``mixture_rates`` / ``mixture_probabilities``: T0's capped rates, as pure functions;
- two loaders that register seqio Tasks and a Mixture explicitly (importing this module registers
  nothing, and imports neither TensorFlow, seqio nor promptsource):

  - ``register_t0_mixture_from_hf``: real runs, templates applied to Hugging Face datasets at read
    time. Needs the network or a populated Hugging Face cache when the data is first read;
    registration itself is offline.
  - ``register_t0_mixture_from_jsonl``: offline runs, a directory of pre-rendered prompted tasks,
    one ``<dataset>__<template>.jsonl`` file each (see ``jsonl_file_name``). ``write_prompted_jsonl``
    makes that layout from raw examples (how P3 is exported for offline use) and ``make_fixture``
    is the generator of the tests' fixture.

Features follow T0's ``add_task``: ``inputs`` and ``targets`` are text tokenized with the given
vocabulary, and **EOS is appended to the targets only** (T0 and promptsource both declare
``inputs: add_eos=False``, ``targets: add_eos=True``, then run ``tokenize`` and ``append_eos``).

What is certain (read from the sources at the commits named):

- The 38 BASE datasets, their HF names/subsets and ``train_size``: [T0] ``t0/datasets.csv``
  (commit 0892110); the subsets match promptsource 0.2.3's template folders (a test checks).
- The rate rule, from [T0] ``tasks.py`` (commits 0892110 and 4334fee agree): ``cap = train_size``
  if ``train_size <= 500_000``, else ``500_000 // num_templates`` (integer division), where
  ``num_templates`` counts *all* of the dataset's templates, blacklisted ones included. Note that this is not ``min(N, 500_000 / T)``: a
  dataset of 400k examples with 10 templates gives every template 400k, not 50k.
- T0's blacklist (``TASK_BLACKLIST``) names seqio tasks, not templates. Of its 24 entries only
  ``gigaword_summarize_`` belongs to a BASE dataset (the hotpot_qa, wiki_hop/masked, tab_fact,
  narrativeqa and ecthr_cases entries are other datasets). No common_gen template is blacklisted.
- T0 declared each task's splits from the HF split info and read them with
  ``datasets.load_dataset(name, subset)[split]``.
- ``MAX_EXAMPLES_PER_DATASET``; the MTF lengths 1024/256 (PAPER.md 2.2).

What is not certain:

- Templates come from the installed promptsource (0.2.3), not from the promptsource commit T0 and
  the study used; 0.2.3 gives 313 templates for the 38 datasets. Its gigaword has no ``summarize_``
  template, so the one BASE blacklist entry matches nothing here, and the count may differ from the
  set the study trained on. promptsource 0.2.3 also strips whitespace around both parts of a render,
  where P3's cached targets kept a leading space.
- How T0 rendered one example: its ``utils.apply_template`` was read only from a derived copy (the
  original ``t0/seqio_tasks/utils.py`` was not available). That copy applies the template to
  ``removeHyphen(example)`` (keys with ``-`` renamed to ``_``; done here too), drops renders that do
  not split into exactly (input, target) (done here too), and replaces an *empty* target by
  ``"<NO LABEL>"`` (meant for unlabelled test splits) and keeps the example. Here such examples are
  skipped instead, as are renders that raise ``IndexError`` (a label outside the answer choices).
  No T0 source read filters whole templates that "cannot produce targets"; skipping per example
  is what this module does.
- Which Hugging Face hub paths still load: many of these datasets were script-based, which
  ``datasets>=4`` no longer runs, and some moved to namespaced repositories. ``hf_paths`` overrides
  the path per dataset name; nothing here could be checked offline.
- Only the ``train`` split is registered (T0 registered every split of the HF split info).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

if TYPE_CHECKING:  # heavy imports stay lazy: this module must import without TensorFlow
    import seqio
    from promptsource.templates import Template

# PAPER.md 3.3 ([T0] t0/seqio_tasks/tasks.py): above this many training examples a dataset's rate is
# capped, and the cap is shared among its templates.
MAX_EXAMPLES_PER_DATASET = 500_000
# PAPER.md 2.2 (AO *_t0_adapt.gin, eval_t0.gin): MTF task feature lengths {"inputs": 1024, "targets": 256}.
INPUTS_LENGTH = 1024
TARGETS_LENGTH = 256

# Task categories of T0's datasets.csv (``task_by_convention``), in the order of PAPER.md 3.3.
CATEGORIES = (
    "paraphrase",
    "QA_closed_book",
    "QA_extractive",
    "QA_multiple_choice",
    "sentiment",
    "structure_to_text",
    "summarization",
    "topic_classification",
)


class T0DataError(ValueError):
    """Bad T0 data on disk (a missing directory, an empty or malformed JSONL file)."""


@dataclasses.dataclass(frozen=True)
class T0Dataset:
    """One training dataset of the T0 mixture.

    Attributes:
      category: the ``task_by_convention`` column of T0's datasets.csv (one of ``CATEGORIES``).
      name: Hugging Face dataset name, as promptsource spells it (``glue``, ``cos_e``).
      subset: Hugging Face configuration (``mrpc``, ``v1.11``), or None.
      train_size: the ``train_size`` column of T0's datasets.csv, which T0's rates were computed
        from (it is the HF train split's size at the time).
    """

    category: str
    name: str
    subset: str | None
    train_size: int

    def __post_init__(self):
        if self.category not in CATEGORIES:
            raise ValueError(f"T0Dataset.category={self.category!r}: must be one of {CATEGORIES}")
        if not self.name or "/" in self.name:
            raise ValueError(f"T0Dataset.name={self.name!r}: must be a non-empty name without '/'")
        if self.subset is not None and (not self.subset or "/" in self.subset):
            raise ValueError(f"T0Dataset.subset={self.subset!r}: must be None or a name without '/'")
        if self.train_size <= 0:
            raise ValueError(f"T0Dataset.train_size={self.train_size}: must be > 0")

    @property
    def key(self) -> str:
        """``name/subset`` (or ``name``), promptsource's folder and this module's dataset key."""
        return dataset_key(self.name, self.subset)


def _d(category: str, name: str, subset: str | None, train_size: int) -> T0Dataset:
    return T0Dataset(category, name, subset, train_size)


# The "BASE" rows (do_train == "BASE") of [T0] t0/datasets.csv, in file order; the last column is its
# train_size. PAPER.md 3.3 lists the same 38 datasets by category.
T0_TRAIN_DATASETS: tuple[T0Dataset, ...] = (
    _d("paraphrase", "glue", "mrpc", 3_668),
    _d("paraphrase", "glue", "qqp", 363_846),
    _d("paraphrase", "paws", "labeled_final", 49_401),
    _d("QA_closed_book", "kilt_tasks", "hotpotqa", 88_869),
    _d("QA_closed_book", "wiki_qa", None, 20_360),
    _d("QA_extractive", "adversarial_qa", "dbidaf", 10_000),
    _d("QA_extractive", "adversarial_qa", "dbert", 10_000),
    _d("QA_extractive", "adversarial_qa", "droberta", 10_000),
    _d("QA_extractive", "duorc", "SelfRC", 60_721),
    _d("QA_extractive", "duorc", "ParaphraseRC", 69_524),
    _d("QA_extractive", "ropes", None, 10_924),
    _d("QA_extractive", "quoref", None, 19_399),
    _d("QA_multiple_choice", "cos_e", "v1.11", 9_741),
    _d("QA_multiple_choice", "cosmos_qa", None, 25_262),
    _d("QA_multiple_choice", "dream", None, 6_116),
    _d("QA_multiple_choice", "qasc", None, 8_134),
    _d("QA_multiple_choice", "quail", None, 10_246),
    _d("QA_multiple_choice", "quarel", None, 1_941),
    _d("QA_multiple_choice", "quartz", None, 2_696),
    _d("QA_multiple_choice", "sciq", None, 11_679),
    _d("QA_multiple_choice", "social_i_qa", None, 33_410),
    _d("QA_multiple_choice", "wiki_hop", "original", 43_738),
    _d("QA_multiple_choice", "wiqa", None, 29_808),
    _d("sentiment", "amazon_polarity", None, 3_600_000),
    _d("sentiment", "app_reviews", None, 288_065),
    _d("sentiment", "imdb", None, 25_000),
    _d("sentiment", "rotten_tomatoes", None, 8_530),
    _d("sentiment", "yelp_review_full", None, 650_000),
    _d("structure_to_text", "common_gen", None, 67_389),
    _d("structure_to_text", "wiki_bio", None, 582_659),
    _d("summarization", "cnn_dailymail", "3.0.0", 287_113),
    _d("summarization", "gigaword", None, 3_803_957),
    _d("summarization", "multi_news", None, 44_972),
    _d("summarization", "samsum", None, 14_732),
    _d("summarization", "xsum", None, 204_045),
    _d("topic_classification", "ag_news", None, 120_000),
    _d("topic_classification", "dbpedia_14", None, 560_000),
    _d("topic_classification", "trec", None, 5_452),
)

# Templates left out, by dataset key, compared after ``task_clean`` (T0 blacklisted cleaned *task*
# names, so "summarize_" also covers a template named "summarize "). This is the part of [T0]
# tasks.py's TASK_BLACKLIST ("Tasks with broken cached files") that falls on BASE datasets.
TEMPLATE_BLACKLIST: dict[str, tuple[str, ...]] = {
    "gigaword": ("summarize_",),
}

# Separators of the local JSONL layout: "<dataset key, '/' -> '--'>__<cleaned template name>.jsonl".
_SUBSET_SEPARATOR = "--"
_TEMPLATE_SEPARATOR = "__"
_JSONL_SUFFIX = ".jsonl"


def dataset_key(name: str, subset: str | None = None) -> str:
    """``name/subset``, or ``name`` when there is no subset."""
    return f"{name}/{subset}" if subset else name


def split_dataset_key(key: str) -> tuple[str, str | None]:
    """Inverse of ``dataset_key``: ``"glue/mrpc"`` -> ``("glue", "mrpc")``, ``"imdb"`` -> ``("imdb", None)``."""
    name, _, subset = key.partition("/")
    return name, (subset or None)


def find_dataset(key: str) -> T0Dataset:
    """The ``T0_TRAIN_DATASETS`` entry with this key.

    Raises:
      ValueError: the key is not a T0 training dataset.
    """
    for dataset in T0_TRAIN_DATASETS:
        if dataset.key == key:
            return dataset
    raise ValueError(f"dataset={key!r}: not a T0 training dataset; one of "
                     f"{[d.key for d in T0_TRAIN_DATASETS]}")


def task_clean(text: str) -> str:
    """T0's ``utils.task_clean``: every run of characters outside ``[\\w\\d._]`` becomes ``_``."""
    return re.sub(r"[^\w\d\._]+", "_", text)


def t0_task_name(dataset: T0Dataset | str, template_name: str) -> str:
    """T0's (and P3's) task name, e.g. ``glue_mrpc_equivalent``, ``imdb_Sentiment_with_choices_``."""
    name, subset = _name_subset(dataset)
    return task_clean(name + (f"_{subset}_" if subset is not None else "_") + template_name)


def _name_subset(dataset: T0Dataset | str) -> tuple[str, str | None]:
    if isinstance(dataset, T0Dataset):
        return dataset.name, dataset.subset
    return split_dataset_key(dataset)


# -------------------------------------------------------------------------------------------------
# Templates
# -------------------------------------------------------------------------------------------------

def _all_templates(dataset: T0Dataset | str) -> list[tuple[str, "Template"]]:
    """Every promptsource template of ``dataset`` with metadata, sorted by name, blacklist ignored."""
    from promptsource.templates import DatasetTemplates  # lazy: ~2 s, and pkg_resources warnings

    name, subset = _name_subset(dataset)
    collection = DatasetTemplates(name, subset)
    templates = [(n, collection[n]) for n in collection.all_template_names]
    templates = [(n, t) for n, t in templates if t.metadata is not None]
    if not templates:
        raise ValueError(f"dataset={dataset_key(name, subset)!r}: promptsource has no templates "
                         "for it (expected promptsource/templates/<name>/<subset>/templates.yaml)")
    return templates


def t0_templates(dataset: T0Dataset | str) -> list[tuple[str, "Template"]]:
    """The templates T0 trains on for ``dataset``: all with metadata, minus ``TEMPLATE_BLACKLIST``.

    Reads promptsource's bundled YAML (offline). Original-task and non-original-task templates are
    both kept: T0's training mixture used all of them (only its evaluation keeps original tasks).

    Args:
      dataset: a ``T0Dataset`` or a key such as ``"glue/mrpc"`` or ``"imdb"``.

    Returns:
      ``[(template name, promptsource Template)]`` sorted by name.

    Raises:
      ValueError: promptsource has no templates for the dataset.
    """
    name, subset = _name_subset(dataset)
    blacklist = set(TEMPLATE_BLACKLIST.get(dataset_key(name, subset), ()))
    return [(n, t) for n, t in _all_templates(dataset) if task_clean(n) not in blacklist]


def render_example(template: "Template", example: Mapping[str, Any]) -> tuple[str, str] | None:
    """Applies a promptsource template to one raw example, as T0's ``apply_template`` does.

    Args:
      template: a promptsource Template.
      example: one raw Hugging Face example (a mapping of field name to value).

    Returns:
      ``(inputs, targets)``, or None when the template produces no target for this example (a
      conditional template rendering nothing, an empty part, or an answer-choice index that does not
      exist): such examples are skipped rather than trained on.
    """
    from promptsource.utils import removeHyphen

    try:
        # T0 renamed hyphenated fields first: templates refer to them with underscores.
        parts = template.apply(removeHyphen(dict(example)))
    except IndexError:  # answer_choices[label] with a label outside the list (e.g. -1 for unlabelled)
        return None
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1]


# -------------------------------------------------------------------------------------------------
# Mixing rates
# -------------------------------------------------------------------------------------------------

def mixing_rate(num_examples: int, num_templates: int,
                max_examples_per_dataset: int = MAX_EXAMPLES_PER_DATASET) -> int:
    """T0's rate for each prompted task of a dataset (PAPER.md 3.3).

    A dataset at or below the cap gives every template its full size; a larger one shares the cap
    among its templates, with T0's integer division.

    Args:
      num_examples: training examples of the dataset (N).
      num_templates: its number of templates (T).
      max_examples_per_dataset: the cap (500,000 in T0).

    Returns:
      ``N`` if ``N <= cap`` else ``cap // T``.

    Raises:
      ValueError: a non-positive argument.
    """
    for field, value in (("num_examples", num_examples), ("num_templates", num_templates),
                         ("max_examples_per_dataset", max_examples_per_dataset)):
        if value <= 0:
            raise ValueError(f"{field}={value}: must be > 0")
    if num_examples > max_examples_per_dataset:
        return max_examples_per_dataset // num_templates
    return num_examples


def mixture_rates(example_counts: Mapping[str, int],
                  templates_per_dataset: Mapping[str, Sequence[str]],
                  max_examples_per_dataset: int = MAX_EXAMPLES_PER_DATASET) -> dict[str, float]:
    """The capped examples-proportional rate of every prompted task.

    Args:
      example_counts: dataset key -> its number of training examples.
      templates_per_dataset: dataset key -> the names of its prompted tasks (one per template);
        their number is the T of ``mixing_rate``.
      max_examples_per_dataset: the cap.

    Returns:
      task name -> rate (unnormalised, as seqio takes them), e.g. a dataset of 1,000,000 examples
      with 4 templates gives each task 125,000.

    Raises:
      ValueError: the two mappings name different datasets, a dataset has no tasks, a task name
        repeats, or the cap leaves a task a rate of 0.
    """
    if set(example_counts) != set(templates_per_dataset):
        raise ValueError(f"example_counts and templates_per_dataset must name the same datasets; "
                         f"only in one of them: "
                         f"{sorted(set(example_counts) ^ set(templates_per_dataset))}")
    rates: dict[str, float] = {}
    for key in sorted(templates_per_dataset):
        tasks = templates_per_dataset[key]
        if not tasks:
            raise ValueError(f"templates_per_dataset[{key!r}]: empty; a dataset needs a template")
        rate = mixing_rate(example_counts[key], len(tasks), max_examples_per_dataset)
        if rate == 0:
            raise ValueError(f"max_examples_per_dataset={max_examples_per_dataset}: shared among the "
                             f"{len(tasks)} templates of {key!r} it leaves each a rate of 0; "
                             "raise it to at least the number of templates")
        for task in tasks:
            if task in rates:
                raise ValueError(f"task {task!r}: listed twice in templates_per_dataset")
            rates[task] = float(rate)
    return rates


def mixture_probabilities(rates: Mapping[str, float]) -> dict[str, float]:
    """Rates normalised to sampling probabilities (what seqio samples with); they sum to 1.

    Raises:
      ValueError: no rates, a negative rate, or all rates zero.
    """
    if not rates or any(r < 0 for r in rates.values()) or sum(rates.values()) <= 0:
        raise ValueError(f"rates={dict(rates)!r}: need at least one, none negative, sum > 0")
    total = float(sum(rates.values()))
    return {task: rate / total for task, rate in rates.items()}


# -------------------------------------------------------------------------------------------------
# Local JSONL layout
# -------------------------------------------------------------------------------------------------

def jsonl_file_name(dataset: T0Dataset | str, template_name: str) -> str:
    """File name of a prompted task in the local layout: ``glue--mrpc__equivalent.jsonl``.

    Dataset keys contain ``/``, so it becomes ``--``; template names (which contain spaces, some
    trailing) are cleaned with T0's ``task_clean``.
    """
    name, subset = _name_subset(dataset)
    encoded = dataset_key(name, subset).replace("/", _SUBSET_SEPARATOR)
    return f"{encoded}{_TEMPLATE_SEPARATOR}{task_clean(template_name)}{_JSONL_SUFFIX}"


def parse_jsonl_file_name(path: str | os.PathLike) -> tuple[str, str]:
    """``(dataset key, cleaned template name)`` of a layout file; inverse of ``jsonl_file_name``.

    Raises:
      T0DataError: the name is not ``<dataset>__<template>.jsonl``.
    """
    file_name = Path(path).name
    stem = file_name[: -len(_JSONL_SUFFIX)] if file_name.endswith(_JSONL_SUFFIX) else ""
    encoded, separator, template = stem.partition(_TEMPLATE_SEPARATOR)
    if not separator or not encoded or not template:
        raise T0DataError(f"{path}: file name must be <dataset>__<template>.jsonl (dataset '/' "
                          "written '--', e.g. glue--mrpc__equivalent.jsonl)")
    return encoded.replace(_SUBSET_SEPARATOR, "/"), template


def count_jsonl_examples(path: str | os.PathLike) -> int:
    """Validates a prompted-task JSONL file line by line (streaming) and counts its examples.

    Every non-blank line must be a JSON object with non-empty string fields ``inputs`` and
    ``targets`` (T0 dropped examples with an empty part); blank lines are skipped.

    Raises:
      T0DataError: unreadable or undecodable file, malformed JSON (``file:line``), a missing or bad
        field, or no examples at all.
    """
    count = 0
    try:
        with open(path, encoding="utf-8") as stream:
            for line_number, line in enumerate(stream, start=1):
                if line.strip():
                    _parse_jsonl_line(line, path, line_number)
                    count += 1
    except (OSError, UnicodeDecodeError) as error:
        raise T0DataError(f"{path}: cannot read as UTF-8 text ({error})") from error
    if count == 0:
        raise T0DataError(f"{path}: no examples; each line must be "
                          '{"inputs": "...", "targets": "..."} (remove the file or fill it)')
    return count


def _parse_jsonl_line(line: str, path: str | os.PathLike, line_number: int) -> tuple[str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise T0DataError(f"{path}:{line_number}: malformed JSON ({error.msg}, column "
                          f"{error.colno})") from None
    if not isinstance(record, dict):
        raise T0DataError(f"{path}:{line_number}: expected a JSON object with 'inputs' and "
                          f"'targets', got {type(record).__name__}")
    for field in ("inputs", "targets"):
        value = record.get(field)
        if not isinstance(value, str) or not value:
            found = "missing" if field not in record else f"{value!r}"
            raise T0DataError(f"{path}:{line_number}: field {field!r} must be a non-empty string, "
                              f"got {found}")
    return record["inputs"], record["targets"]


def _iter_jsonl(path: str) -> Iterator[tuple[str, str]]:
    with open(path, encoding="utf-8") as stream:
        for line_number, line in enumerate(stream, start=1):
            if line.strip():
                yield _parse_jsonl_line(line, path, line_number)


def scan_jsonl_directory(directory: str | os.PathLike) -> dict[str, dict[str, tuple[Path, int]]]:
    """Finds, validates and counts every prompted task of a local layout directory.

    Returns:
      dataset key -> {cleaned template name -> (file path, number of examples)}.

    Raises:
      T0DataError: missing directory, no ``*.jsonl`` file, a badly named, empty or malformed file.
    """
    found: dict[str, dict[str, tuple[Path, int]]] = {}
    for path in _jsonl_files(directory):
        key, template = parse_jsonl_file_name(path)
        found.setdefault(key, {})[template] = (path, count_jsonl_examples(path))
    return found


def check_jsonl_directory(directory: str | os.PathLike) -> None:
    """Quick checks of a local layout directory, in milliseconds: what a run checks before it
    writes or compiles anything.

    The directory holds ``*.jsonl`` files, each named ``<dataset>__<template>.jsonl``, readable, and
    starting with a valid example. ``scan_jsonl_directory`` validates every line when the mixture
    is built.

    Raises:
      T0DataError: one line naming the directory or file and the fix.
    """
    for path in _jsonl_files(directory):
        parse_jsonl_file_name(path)
        try:
            with open(path, encoding="utf-8") as stream:
                first = next(((number, line) for number, line in enumerate(stream, start=1)
                              if line.strip()), None)
        except (OSError, UnicodeDecodeError) as error:
            raise T0DataError(f"{path}: cannot read as UTF-8 text ({error})") from None
        if first is None:
            raise T0DataError(f"{path}: no examples; each line must be "
                              '{"inputs": "...", "targets": "..."} (remove the file or fill it)')
        _parse_jsonl_line(first[1], path, first[0])


def _jsonl_files(directory: str | os.PathLike) -> list[Path]:
    """The ``*.jsonl`` files of a layout directory, sorted; an error if there are none."""
    root = Path(directory)
    if not root.exists():
        raise T0DataError(f"{root}: T0 JSONL directory does not exist")
    if not root.is_dir():
        raise T0DataError(f"{root}: not a directory; expected a directory of "
                          "<dataset>__<template>.jsonl files")
    paths = sorted(p for p in root.glob(f"*{_JSONL_SUFFIX}") if p.is_file())
    if not paths:
        raise T0DataError(f"{root}: no *.jsonl files; expected <dataset>__<template>.jsonl files "
                          "(write_prompted_jsonl makes them)")
    return paths


def write_prompted_jsonl(dataset_examples: Mapping[str, Iterable[Mapping[str, Any]]],
                         templates: Mapping[str, Sequence[tuple[str, "Template"]]] | None,
                         out_dir: str | os.PathLike, *, overwrite: bool = False) -> dict[str, int]:
    """Renders promptsource templates over raw examples into the local JSONL layout.

    This is how P3 is exported for offline runs (iterate the HF train split of each dataset) and
    how the tests' fixture is made. Each dataset's examples are read once, in order; each template
    writes one file, one ``{"inputs", "targets"}`` line per example it renders. Examples a template
    renders no target for are skipped, and a template that renders none writes no file.

    Args:
      dataset_examples: dataset key (``"glue/mrpc"``) -> raw examples.
      templates: dataset key -> ``[(template name, Template)]``; a dataset missing from it (or
        None) gets ``t0_templates``.
      out_dir: the layout directory (created if needed).
      overwrite: replace existing files; otherwise an existing file is an error, raised before
        anything is written.

    Returns:
      file name -> number of examples written (0 for templates that wrote no file).

    Raises:
      T0DataError: a file exists and ``overwrite`` is False, or two templates of a dataset clean to
        the same file name.
    """
    out = Path(out_dir)
    plan: dict[str, list[tuple[str, "Template"]]] = {}
    for key in dataset_examples:
        chosen = list(templates[key] if templates and key in templates else t0_templates(key))
        names = [jsonl_file_name(key, n) for n, _ in chosen]
        if len(set(names)) != len(names):
            raise T0DataError(f"{out}: templates of {key!r} clean to the same file name: "
                              f"{sorted(n for n in names if names.count(n) > 1)}")
        for file_name in names:
            if (out / file_name).exists() and not overwrite:
                raise T0DataError(f"{out / file_name}: exists; pass overwrite=True to replace it")
        plan[key] = chosen
    out.mkdir(parents=True, exist_ok=True)

    written: dict[str, int] = {}
    for key, examples in dataset_examples.items():
        chosen = plan[key]
        finals = [out / jsonl_file_name(key, n) for n, _ in chosen]
        # Write beside the final names and rename at the end, so that a failure never leaves a
        # half-written file under a name the loader would read.
        temps = [f.with_name(f".{f.name}.partial") for f in finals]
        counts = [0] * len(chosen)
        streams = [open(t, "w", encoding="utf-8") for t in temps]
        try:
            for example in examples:
                for index, (_, template) in enumerate(chosen):
                    rendered = render_example(template, example)
                    if rendered is not None:
                        record = {"inputs": rendered[0], "targets": rendered[1]}
                        streams[index].write(json.dumps(record, ensure_ascii=False) + "\n")
                        counts[index] += 1
        except BaseException:
            for stream, temp in zip(streams, temps):
                stream.close()
                temp.unlink(missing_ok=True)
            raise
        for stream, temp, final, count in zip(streams, temps, finals, counts):
            stream.close()
            if count:
                os.replace(temp, final)
            else:  # the loader rejects empty files, so none is written
                temp.unlink()
            written[final.name] = count
    return written


# The fixture's raw examples, hand-written in the HF datasets' schemas (ag_news: text, label in
# World/Sports/Business/Sci-Tech; imdb: text, label neg/pos; glue/mrpc: sentence1, sentence2,
# label not-equivalent/equivalent, idx).
_FIXTURE_EXAMPLES: dict[str, tuple[dict[str, Any], ...]] = {
    "ag_news": tuple({"text": t, "label": l} for t, l in (
        ("Leaders meet in Geneva to discuss a ceasefire.", 0),
        ("Parliament passes the new election law.", 0),
        ("Floods displace thousands along the river delta.", 0),
        ("Home side wins the cup final on penalties.", 1),
        ("Veteran striker signs a two-year contract.", 1),
        ("Marathon record falls in Berlin.", 1),
        ("Shares rise after the bank beats forecasts.", 2),
        ("Retailer cuts jobs as sales slow.", 2),
        ("Oil prices ease on supply news.", 2),
        ("New chip doubles battery life, maker says.", 3),
        ("Probe sends first images from the comet.", 3),
        ("Researchers release an open-source compiler.", 3),
    )),
    "imdb": tuple({"text": t, "label": l} for t, l in (
        ("A warm, funny film with a great cast.", 1),
        ("Two hours I will never get back.", 0),
        ("The plot drags and the jokes fall flat.", 0),
        ("Beautifully shot and quietly moving.", 1),
        ("I loved every minute of it.", 1),
    )),
    "glue/mrpc": tuple({"sentence1": a, "sentence2": b, "label": l, "idx": i}
                       for i, (a, b, l) in enumerate((
        ("The company posted a profit of $3 million.", "It reported a $3 million profit.", 1),
        ("The talks ended without a deal.", "No agreement was reached in the talks.", 1),
        ("He was born in 1950 in Ohio.", "He moved to Ohio in 1970.", 0),
        ("The bridge will reopen on Monday.", "On Monday the bridge reopens.", 1),
    ))),
}

# Few templates per dataset keep the fixture small and its mixture quick to sample. mrpc's
# generate_paraphrase only renders paraphrases (label 1), so it exercises skipping: it writes 3
# lines where equivalent writes 4.
_FIXTURE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "ag_news": ("classify", "classify_question_first", "which_section"),
    "imdb": ("Movie Expressed Sentiment", "Reviewer Enjoyment Yes No"),
    "glue/mrpc": ("equivalent", "generate_paraphrase"),
}


def make_fixture(out_dir: str | os.PathLike) -> dict[str, int]:
    """Writes the tests' local T0 layout: 3 datasets, 7 prompted tasks, 59 lines (deterministic).

    ag_news: 12 examples x 3 templates; imdb: 5 x 2; glue/mrpc: 4 x 2, one template skipping the
    non-paraphrase. With ``max_examples_per_dataset=6`` the rates are ag_news 6 // 3 = 2 per
    template (12 > 6), imdb 5 and mrpc 4 (at or below the cap): probabilities 1/12, 5/24, 1/6.

    Args:
      out_dir: directory to write into (created; existing fixture files are replaced).

    Returns:
      file name -> number of lines.
    """
    selected = {}
    for key, names in _FIXTURE_TEMPLATES.items():
        available = dict(t0_templates(key))
        selected[key] = [(n, available[n]) for n in names]
    return write_prompted_jsonl(_FIXTURE_EXAMPLES, selected, out_dir, overwrite=True)


# -------------------------------------------------------------------------------------------------
# seqio registration
# -------------------------------------------------------------------------------------------------

# Mixture name -> (definition fingerprint, its task names), for the mixtures this module registered:
# registering the same definition again is a no-op, a new definition replaces ours.
_REGISTERED: dict[str, tuple[tuple[Any, ...], tuple[str, ...]]] = {}


@dataclasses.dataclass(frozen=True)
class _TaskSpec:
    name: str  # seqio task name
    rate: float
    source_key: tuple[Any, ...]  # what the data is, for the idempotence fingerprint
    make_source: Any  # () -> seqio.DataSource, called only when (re-)registering


def output_features(vocabulary: "seqio.Vocabulary") -> dict[str, "seqio.Feature"]:
    """T0's features: text tokenized with ``vocabulary``; EOS on the targets only (T0 ``add_task``)."""
    import seqio
    import tensorflow as tf

    return {
        "inputs": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32),
        "targets": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32),
    }


# Examples per hand-off from Python to tf.data. from_generator costs ~0.6 ms per element; chunks of
# 256 then ``unbatch`` read ~12x faster (measured: 1.5k vs 18k examples/s on this 2-core machine).
_GENERATOR_CHUNK = 256


def _text_dataset(make_records: Callable[[], Iterable[tuple[str, str]]]):
    """A ``tf.data.Dataset`` of ``{"inputs": str, "targets": str}`` from a Python record factory."""
    import tensorflow as tf

    def chunks() -> Iterator[dict[str, list[str]]]:
        records = iter(make_records())
        while chunk := list(itertools.islice(records, _GENERATOR_CHUNK)):
            yield {"inputs": [r[0] for r in chunk], "targets": [r[1] for r in chunk]}

    signature = {"inputs": tf.TensorSpec((None,), tf.string),
                 "targets": tf.TensorSpec((None,), tf.string)}
    return tf.data.Dataset.from_generator(chunks, output_signature=signature).unbatch()


def _jsonl_dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *, path: str):
    """seqio dataset_fn over one prompted-task JSONL file (one file: nothing to shuffle)."""
    del split, shuffle_files, seed
    return _text_dataset(functools.partial(_iter_jsonl, path))


def _hf_dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *, hf_path: str,
                   subset: str | None, template: "Template", cache_dir: str | None):
    """seqio dataset_fn applying one template to a Hugging Face split at read time (as T0)."""
    del shuffle_files, seed  # HF datasets has no file-level shuffling (T0's comment)
    import datasets  # lazy: only real runs need it, and it needs the network or a filled cache

    hf_dataset = datasets.load_dataset(hf_path, subset, split=split, cache_dir=cache_dir)

    def records() -> Iterator[tuple[str, str]]:
        for example in hf_dataset:
            rendered = render_example(template, example)
            if rendered is not None:
                yield rendered

    return _text_dataset(records)


# seqio's rule for task and mixture names (dataset_providers._VALID_TASK_NAME_REGEX).
_VALID_NAME = re.compile(r"^[\w\d\.\:_#]+$")


def _check_arguments(name: str, vocabulary: Any) -> None:
    """Checks what the user passed before any data is read or anything is registered."""
    import seqio

    if not isinstance(name, str) or not _VALID_NAME.match(name):
        raise ValueError(f"name={name!r}: a mixture name may hold only letters, digits and . : _ #")
    if not isinstance(vocabulary, seqio.Vocabulary):
        raise ValueError(f"vocabulary={vocabulary!r}: must be a seqio.Vocabulary "
                         "(e.g. seqio.ByteVocabulary(extra_ids=100) or a SentencePieceVocabulary)")


def _register(name: str, specs: Sequence[_TaskSpec], vocabulary: "seqio.Vocabulary",
              fingerprint: tuple[Any, ...]) -> "seqio.Mixture":
    """Registers ``specs`` and a Mixture over them; idempotent for an identical definition."""
    import seqio

    fingerprint = (fingerprint, vocabulary, tuple((s.name, s.rate, s.source_key) for s in specs))
    task_names = tuple(s.name for s in specs)
    previous = _REGISTERED.get(name)
    if (previous is not None and previous[0] == fingerprint
            and name in seqio.MixtureRegistry.names()
            and all(t in seqio.TaskRegistry.names() for t in task_names)):
        return seqio.MixtureRegistry.get(name)

    # Never replace what other code registered: only our own earlier definition of this mixture.
    ours = set(previous[1]) if previous is not None else set()
    if previous is None and name in seqio.MixtureRegistry.names():
        raise ValueError(f"name={name!r}: a mixture of that name was registered by other code; "
                         "pass another name")
    taken = [t for t in task_names if t in seqio.TaskRegistry.names() and t not in ours]
    if taken:
        raise ValueError(f"name={name!r}: task {taken[0]!r} is already registered by other code "
                         f"({len(taken)} in all); pass another name")
    seqio.MixtureRegistry.remove(name)
    for task in ours:
        seqio.TaskRegistry.remove(task)
    # Claim the names before adding, so that a retry after a failure half-way still owns them.
    _REGISTERED[name] = ((), task_names)

    features = output_features(vocabulary)
    for spec in specs:
        seqio.TaskRegistry.add(
            spec.name,
            spec.make_source(),
            output_features=features,
            # T0's order: tokenize, append EOS (where the feature asks), then the cache point.
            preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos,
                           seqio.CacheDatasetPlaceholder(required=False)],
            metric_fns=[],
        )
    mixture = seqio.MixtureRegistry.add(name, [(s.name, s.rate) for s in specs])
    _REGISTERED[name] = (fingerprint, task_names)
    return mixture


def register_t0_mixture_from_jsonl(directory: str | os.PathLike, vocabulary: "seqio.Vocabulary",
                                   name: str = "t0_train_local",
                                   max_examples_per_dataset: int = MAX_EXAMPLES_PER_DATASET,
                                   ) -> "seqio.Mixture":
    """Registers the prompted tasks of a local JSONL layout and their capped mixture (offline).

    Every file is validated and its lines counted (streaming) here, before any TensorFlow graph
    runs. Files are grouped by dataset: a dataset's T is its number of files and its N the largest
    line count among them (a template can only drop examples, so that is the raw example count T0
    takes from datasets.csv); each task's rate is ``mixing_rate(N, T, max_examples_per_dataset)``.
    Tasks are named ``<name>.<T0 task name>`` with only a ``train`` split.

    Args:
      directory: the layout directory (``write_prompted_jsonl``).
      vocabulary: the seqio vocabulary of both features.
      name: mixture name; also the prefix of its task names.
      max_examples_per_dataset: the cap (500,000 in T0).

    Returns:
      The registered ``seqio.Mixture`` (the existing one if this exact definition is registered).

    Raises:
      T0DataError: missing directory, no ``*.jsonl`` files, a badly named or empty file, malformed
        JSON (``file:line``), a missing ``inputs``/``targets`` field.
      ValueError: a bad vocabulary, cap or name.
    """
    _check_arguments(name, vocabulary)
    found = scan_jsonl_directory(directory)
    task_of: dict[tuple[str, str], str] = {
        (key, template): f"{name}.{t0_task_name(key, template)}"
        for key, templates in found.items() for template in templates}
    rates = mixture_rates(
        {key: max(count for _, count in templates.values()) for key, templates in found.items()},
        {key: [task_of[key, t] for t in sorted(templates)] for key, templates in found.items()},
        max_examples_per_dataset)
    specs = []
    for (key, template), task in sorted(task_of.items()):
        path, count = found[key][template]
        stat = path.stat()
        specs.append(_TaskSpec(
            name=task, rate=rates[task],
            source_key=(str(path.resolve()), count, stat.st_size, stat.st_mtime_ns),
            make_source=functools.partial(_jsonl_source, str(path.resolve()), count)))
    return _register(name, specs, vocabulary, ("jsonl", max_examples_per_dataset))


def _jsonl_source(path: str, count: int) -> "seqio.DataSource":
    import seqio

    return seqio.FunctionDataSource(functools.partial(_jsonl_dataset_fn, path=path),
                                    splits=("train",), num_input_examples={"train": count})


def register_t0_mixture_from_hf(vocabulary: "seqio.Vocabulary", name: str = "t0_train",
                                cache_dir: str | None = None,
                                hf_paths: Mapping[str, str] | None = None) -> "seqio.Mixture":
    """Registers T0's training mixture over Hugging Face datasets (real runs).

    One task per (dataset, template) of ``T0_TRAIN_DATASETS`` x ``t0_templates``, named
    ``<name>.<T0 task name>`` (``t0_train.glue_mrpc_equivalent``), with T0's rates: ``mixing_rate``
    of the dataset's datasets.csv ``train_size`` and its number of templates before the blacklist
    (as T0 counted). Registration reads only promptsource's bundled templates, so it runs offline;
    reading a task calls ``datasets.load_dataset(path, subset, split="train")``, which needs the
    network or a populated Hugging Face cache (``cache_dir``), and renders templates on the fly.

    Args:
      vocabulary: the seqio vocabulary of both features.
      name: mixture name; also the prefix of its task names.
      cache_dir: Hugging Face datasets cache directory (None: the library default).
      hf_paths: dataset name -> hub path to load instead (e.g. ``{"glue": "nyu-mll/glue"}``), for
        datasets that moved since T0.

    Returns:
      The registered ``seqio.Mixture``.

    Raises:
      ValueError: a bad vocabulary or name, or promptsource lacks a dataset's templates.
    """
    _check_arguments(name, vocabulary)
    hf_paths = dict(hf_paths or {})
    unknown = sorted(set(hf_paths) - {d.name for d in T0_TRAIN_DATASETS})
    if unknown:
        raise ValueError(f"hf_paths: {unknown} are not T0 training dataset names")
    specs = []
    for dataset in T0_TRAIN_DATASETS:
        # T0 divided the cap by all of a dataset's templates, blacklisted ones included.
        rate = float(mixing_rate(dataset.train_size, len(_all_templates(dataset))))
        hf_path = hf_paths.get(dataset.name, dataset.name)
        for template_name, template in t0_templates(dataset):
            specs.append(_TaskSpec(
                name=f"{name}.{t0_task_name(dataset, template_name)}", rate=rate,
                source_key=(hf_path, dataset.subset, template_name, template.jinja,
                            template.answer_choices),
                make_source=functools.partial(_hf_source, hf_path, dataset.subset, template,
                                              cache_dir)))
    return _register(name, specs, vocabulary, ("hf", cache_dir))


def _hf_source(hf_path: str, subset: str | None, template: "Template",
               cache_dir: str | None) -> "seqio.DataSource":
    import seqio

    dataset_fn = functools.partial(_hf_dataset_fn, hf_path=hf_path, subset=subset,
                                   template=template, cache_dir=cache_dir)
    # num_input_examples stays unknown: reading the HF split info would need the network here.
    return seqio.FunctionDataSource(dataset_fn, splits=("train",))

