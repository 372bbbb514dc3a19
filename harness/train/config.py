"""The run configuration of one training stage: typed, frozen, composed dataclasses (STYLE.md B2.6).

One ``RunConfig`` describes one stage of one cell: pretraining, adaptation or multitask finetuning
(PAPER.md 1.3). It is composed of small frozen sections, each of which checks its own fields::

    RunConfig(name, run_dir,
              model=ModelSection,       preset + the ModelConfig fields that differ from it
              data=DataConfig,          objective, source, vocabulary, lengths, seed, packing
              optim=OptimConfig,        Adafactor / AdamW and the learning-rate schedule
              train=TrainConfig,        steps, batch, microbatches, z-loss, loss normalisation
              checkpoint=CheckpointConfig,
              mesh=MeshConfig,          the (data, model) device mesh
              stage=StageConfig,        pretrain | adapt | finetune, and the run it starts from
              eval=EvalConfig)

It is built from a YAML file plus ``--set key=value`` overrides with dotted keys (no gin, STYLE.md
B5.1)::

    # stage.yaml
    name: nd_plm
    model: {preset: small, architecture: nd}
    data: {objective: plm, source: corpus.txt, vocabulary: spm.model, total_length: 128}
    train: {steps: 1000, batch_size: 32}

    load_config("stage.yaml", ["train.steps=100", "model.dropout_rate=0.1"])

With no file and no overrides the configuration is the study's CD:FLM pretraining run (PAPER.md 1.3,
2.1): the 4.8B decoder, 131,072 steps of 2,048 x 626 tokens of C4, Adafactor(decay 0.8) with the
1/sqrt(max(n, 1e4)) schedule and a 1e-4 z-loss. Smaller runs override ``model.preset``,
``train.steps`` and ``train.batch_size``; grid cells (``experiments/grid.py``) are deltas on a base,
applied with ``with_overrides``.

Every key is checked: an unknown key, or a value of the wrong type, is a ``ValueError`` whose one
line names the dotted key (``train.steps='ten': expected int``). Cross-field checks (architecture x
objective, lengths, mesh, batch divisibility, stage) live in one ``validate(config, num_devices)``,
which the harness calls before anything is compiled (STYLE.md B4). ``write_resolved`` writes the
resolved configuration into ``<run_dir>/config.json`` before step 0, in the format of
``harness/storage/checkpoint.py`` (``{"model": ModelConfig.to_dict(), "run": to_dict(config), ...}``).

This module imports neither TensorFlow nor seqio (nor JAX itself): configurations are built and
checked on any machine, before the data pipeline starts. ``check_inputs`` then checks the files a
configuration names (source, vocabulary, upstream run) in milliseconds.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import pathlib
import re
import types
import typing
from typing import Any, ClassVar, Mapping, Optional, Sequence, Union

import yaml

from models import config as model_config_lib
from models import flops as flops_lib
from models.config import ModelConfig
from objectives import lengths as lengths_lib
from objectives import sources as sources_lib
from objectives import t0 as t0_lib
from objectives import tasks
from objectives import vocab as vocab_lib

# The format of harness/storage/checkpoint.py (kept equal to its constants; tests/test_config_run.py checks
# it). Duplicated so that building a configuration does not import orbax.
CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
MODEL_KEY = "model"
# The top-level key of config.json that holds ``to_dict(config)``.
RUN_KEY = "run"
# The top-level key of config.json that lists each restart of the run (harness/train/run_record.py).
RESUMES_KEY = "resumes"

OBJECTIVES = ("flm", "plm", "mlm", "mtf")  # mtf: multitask finetuning on the T0 mixture
PRETRAINING_OBJECTIVES = tasks.OBJECTIVES
# Sources of the T0 mixture (objectives/t0.py): Hugging Face datasets, or a local directory of
# prompted JSONL files. Pretraining sources are "c4", "c4-tfds", "c4-hf" or a local path.
T0_HF_SOURCE = "t0-hf"
C4_SOURCES = ("c4", "c4-tfds", "c4-hf")
# Ids of the named vocabularies (objectives/vocab.py): T5's 32,000 pieces + 100 sentinels, and
# seqio's ByteVocabulary (3 specials + 256 bytes + 100 sentinels). The model's embedding must have
# a row for each; JAX clamps out-of-range gathers, so a smaller table would train on garbage.
VOCABULARY_IDS = {"t5": vocab_lib.T5_VOCAB_SIZE, "byte": vocab_lib.BYTE_VOCAB_SIZE}
# Embedding rows are padded to a multiple of this (T5's 32,100 ids -> 32,128, PAPER.md Table 1).
VOCAB_SIZE_MULTIPLE = 128

# "adafactor": t5x's, as the study ran it; "adafactor_optax": optax's (harness/train/optim.py).
OPTIMIZERS = ("adafactor", "adafactor_optax", "adamw")
SCHEDULES = ("rsqrt", "constant", "cosine")
LOSS_NORMALIZATIONS = ("sum", "tokens")
STAGE_KINDS = ("pretrain", "adapt", "finetune")
# Evaluation suites (PAPER.md 3.1, 3.2); the evaluation issues extend this tuple.
EVAL_SUITES = ("eai", "t0")

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


# -------------------------------------------------------------------------------------------------
# Type checking of one value against a dataclass field type.
# -------------------------------------------------------------------------------------------------

def _type_name(field_type: Any) -> str:
    """How an error message names a field type: ``int``, ``float or null``, ``list of int``."""
    if field_type is bool:
        return "bool (true or false)"
    if field_type in (int, float, str):
        return field_type.__name__
    origin = typing.get_origin(field_type)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(field_type) if a is not type(None)]
        return " or ".join(names) + " or null"
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(field_type)[0])}"
    return getattr(field_type, "__name__", str(field_type))


def _coerce(key: str, value: Any, field_type: Any) -> Any:
    """``value`` checked against ``field_type`` and put in canonical form.

    Canonical forms: ints are accepted (and stored) as floats in float fields; lists become tuples.
    A float field also takes a string such as ``"1e-3"``: PyYAML reads YAML 1.1, in which a float
    needs a dot, so ``learning_rate: 1e-3`` arrives as a string. ``bool`` is never an ``int``.

    Raises:
      ValueError: ``<key>=<value>: expected <type>``.
    """
    def fail() -> ValueError:
        return ValueError(f"{key}={value!r}: expected {_type_name(field_type)}")

    if field_type is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if field_type is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail()
        return value
    if field_type is float:
        if isinstance(value, bool):
            raise fail()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise fail() from None
            if number != number or number in (float("inf"), float("-inf")):
                raise fail()
            return number
        raise fail()
    if field_type is str:
        if not isinstance(value, str):
            raise fail()
        return value
    origin = typing.get_origin(field_type)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(field_type) if a is not type(None)]
        try:
            return _coerce(key, value, inner)
        except ValueError:
            raise fail() from None
    if origin is tuple:
        inner = typing.get_args(field_type)[0]
        if not isinstance(value, (list, tuple)):
            raise fail()
        try:
            return tuple(_coerce(key, item, inner) for item in value)
        except ValueError:
            raise fail() from None
    raise TypeError(f"{key}: unsupported field type {field_type!r}")  # a bug here, not user input


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved type}`` of a dataclass (annotations are strings here); cached, so
    callers must not change the dict they get."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _choice(key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r}: must be one of {list(allowed)}")


def _at_least(key: str, value: Any, minimum: float) -> None:
    if value < minimum:
        raise ValueError(f"{key}={value!r}: must be >= {minimum}")


class _Section:
    """Base of the sections: type-checks every field, then runs the section's own ``_check``."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, field_type in _field_types(type(self)).items():
            value = _coerce(f"{self.SECTION}.{name}", getattr(self, name), field_type)
            object.__setattr__(self, name, value)  # frozen: canonical form set once, here
        self._check()

    def _check(self) -> None:
        """Checks of field values; each section overrides it."""

    def _key(self, name: str) -> str:
        return f"{self.SECTION}.{name}"


# -------------------------------------------------------------------------------------------------
# Sections.
# -------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The model: a preset (``models.config.PRESETS``) and the ``ModelConfig`` fields that differ.

    In YAML the section is flat: ``model: {preset: small, architecture: nd, dropout_rate: 0.1}``;
    any ``ModelConfig`` field may override the preset. The resolved ``ModelConfig`` is ``config``
    (and ``RunConfig.model_config()``).

    The section is stored in canonical form: ``architecture`` resolved (None means the preset's
    default: "cd", or "ed" for ``paper-encdec``) and ``overrides`` reduced to the fields whose
    resolved value differs from ``preset(preset, architecture)``, sorted by name. Two sections that
    resolve to the same model are therefore equal, and a delta such as ``model.architecture=ed``
    re-derives what the preset derives (``num_encoder_layers``) while keeping real overrides
    (dropout, dtype). An override equal to the preset's value is not kept: after
    ``model.preset=base`` it takes base's value.

    Attributes:
      preset: the preset name.
      architecture: "cd", "nd" or "ed"; None for the preset's default.
      overrides: ``{ModelConfig field: value}`` (a mapping or ``(name, value)`` pairs), not
        ``architecture``.
      config: the resolved ``ModelConfig`` (derived; not an argument).

    Raises:
      ValueError: an unknown preset or field, a value of the wrong type, or a model the preset and
        fields cannot make; the message starts with the dotted key
        (``model.dropout_rate=1.5: ...``).
    """

    SECTION: ClassVar[str] = "model"

    preset: str = "paper-decoder"
    architecture: Optional[str] = None
    overrides: Any = ()
    config: ModelConfig = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        preset_name = _coerce("model.preset", self.preset, str)
        architecture = _coerce("model.architecture", self.architecture, Optional[str])
        pairs = (self.overrides.items() if isinstance(self.overrides, Mapping)
                 else self.overrides)
        types_by_name = _field_types(ModelConfig)
        overrides: dict[str, Any] = {}
        for name, value in pairs:
            if name == "architecture" or name not in types_by_name:
                raise ValueError(_unknown_key_message(f"model.{name}", "model", model_keys()))
            overrides[name] = _coerce(f"model.{name}", value, types_by_name[name])
        try:
            resolved = model_config_lib.preset(preset_name, architecture, **overrides)
            base = model_config_lib.preset(preset_name, resolved.architecture)
        except ValueError as e:  # ModelConfig names the bare field; add the section
            raise ValueError(f"model.{e}") from None
        differences = tuple((name, value) for name, value in sorted(resolved.to_dict().items())
                            if name != "architecture" and getattr(base, name) != value)
        object.__setattr__(self, "preset", preset_name)
        object.__setattr__(self, "architecture", resolved.architecture)
        object.__setattr__(self, "overrides", differences)
        object.__setattr__(self, "config", resolved)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ModelSection":
        """The section from its flat YAML form ``{preset, architecture, <ModelConfig field>}``."""
        values = dict(values)
        return cls(preset=values.pop("preset", cls.preset),
                   architecture=values.pop("architecture", None), overrides=values)

    def to_mapping(self) -> dict[str, Any]:
        """The flat form that ``from_mapping`` reads back: preset, architecture and overrides."""
        return {"preset": self.preset, "architecture": self.architecture, **dict(self.overrides)}


def model_keys() -> list[str]:
    """The keys of the ``model`` section: ``preset`` and every ``ModelConfig`` field."""
    return sorted(["preset", *(f.name for f in dataclasses.fields(ModelConfig))])


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """What the stage trains on (PAPER.md 1.2, 2.2, 3.3; ``harness/train/data.py``).

    Attributes:
      objective: "flm", "plm", "mlm" (pretraining and adaptation) or "mtf" (multitask finetuning on
        the T0 training mixture).
      source: pretraining: "c4" (TFDS ``c4/en:2.2.0``, the study's), "c4-tfds", "c4-hf" or a local
        text/JSONL file or directory. mtf: "t0-hf" (Hugging Face) or a local directory of prompted
        JSONL files (``objectives/t0.py``).
      vocabulary: "t5" (the study's), "byte", or the path of a SentencePiece ``.model``.
      total_length: tokens per pretraining sequence (626 in the study, PAPER.md 1.2); each
        objective's feature lengths derive from it (``objectives.lengths.task_feature_lengths``).
        Not used by mtf.
      inputs_length: mtf only: inputs length; None for the study's 1024 (PAPER.md 2.2).
      targets_length: mtf only: targets length; None for the study's 256.
      text_field: the JSONL field holding a document's text (local pretraining sources).
      seed: the one seed of the data stream (shuffling, chunking, noise, split points).
      pack: pack examples into rows (the study packs every objective).
    """

    SECTION: ClassVar[str] = "data"

    objective: str = "flm"
    source: str = "c4"
    vocabulary: str = "t5"
    total_length: int = lengths_lib.TOTAL_LENGTH
    inputs_length: Optional[int] = None
    targets_length: Optional[int] = None
    text_field: str = "text"
    seed: int = 0
    pack: bool = True

    def _check(self) -> None:
        _choice(self._key("objective"), self.objective, OBJECTIVES)
        for name in ("source", "vocabulary", "text_field"):
            if not getattr(self, name):
                raise ValueError(f"{self._key(name)}='': must not be empty")
        _at_least(self._key("total_length"), self.total_length, 2)
        for name in ("inputs_length", "targets_length"):
            value = getattr(self, name)
            if value is None:
                continue
            if self.objective != "mtf":
                raise ValueError(
                    f"{self._key(name)}={value}: only used with data.objective='mtf'; pretraining "
                    f"lengths derive from data.total_length (objective {self.objective!r})")
            _at_least(self._key(name), value, 1)
        if self.objective == "mtf" and self.source in C4_SOURCES:
            raise ValueError(
                f"data.source={self.source!r}: objective 'mtf' reads the T0 mixture: use "
                f"{T0_HF_SOURCE!r} or a local directory of prompted JSONL files")
        if self.objective != "mtf" and self.source == T0_HF_SOURCE:
            raise ValueError(
                f"data.source={self.source!r}: the T0 mixture is for data.objective='mtf', not "
                f"{self.objective!r}; pretraining reads {list(C4_SOURCES)} or a local path")

    def task_lengths(self, architecture: str) -> dict[str, int]:
        """The seqio task feature lengths for ``architecture`` (``objectives/lengths.py``).

        Raises:
          ValueError: the pair or the lengths are not usable (``validate`` reports it first).
        """
        if self.objective == "mtf":
            return {"inputs": self.inputs_length or lengths_lib.MTF_LENGTHS["inputs"],
                    "targets": self.targets_length or lengths_lib.MTF_LENGTHS["targets"]}
        return lengths_lib.task_feature_lengths(self.objective, architecture, self.total_length)


@dataclasses.dataclass(frozen=True)
class OptimConfig(_Section):
    """The optimizer and its learning-rate schedule (the harness's, not the model's: STYLE.md B4).

    The study (PAPER.md 2.1): Adafactor(decay_rate=0.8) without momentum, and
      pretraining / adaptation: ``schedule="rsqrt"``, ``learning_rate=1.0``: lr = 1.0 /
        sqrt(max(step, warmup_steps)), flat at 0.01 for the first 10,000 steps (t5x
        ``constant * rsqrt_decay``);
      multitask finetuning: ``schedule="constant"``, ``learning_rate=1e-3``.
    ``cosine`` decays ``learning_rate`` to 0 at ``train.steps`` after a linear warmup (not used by
    the study).

    Attributes:
      name: "adafactor" (t5x's, the study's), "adafactor_optax" (optax's: other factoring, see
        ``harness/train/optim.py``) or "adamw".
      schedule: "rsqrt", "constant" or "cosine".
      learning_rate: base rate (the rsqrt multiplier, the constant rate, or the cosine peak).
      warmup_steps: rsqrt: steps of the flat start; cosine: linear warmup steps; constant: unused.
      decay_rate: Adafactor's second-moment decay exponent (0.8 in the study).
      weight_decay: decoupled weight decay (0 in the study).
      beta1: AdamW's first-moment decay (Adafactor runs without momentum, as in the study).
      beta2: AdamW's second-moment decay.
      grad_clip: global gradient-norm clip; None for none (the study).
      carry_state: a stage restores the optimizer state of ``stage.init_from`` (and its step
        count, so the schedule continues) instead of starting fresh (STYLE.md B2.6: fresh unless
        the config says otherwise). Needs the same optimizer as the run it continues.
      schedule_offset: the schedule is evaluated at ``schedule_offset + step``: with a fresh
        optimizer, set it to the step the stage starts from (``stage.init_step``) to continue the
        upstream run's decay (the study's adaptations, PAPER.md 1.3) instead of restarting it.
    """

    SECTION: ClassVar[str] = "optim"

    name: str = "adafactor"
    schedule: str = "rsqrt"
    learning_rate: float = 1.0
    warmup_steps: int = 10_000
    decay_rate: float = 0.8
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: Optional[float] = None
    carry_state: bool = False
    schedule_offset: int = 0

    def _check(self) -> None:
        _choice(self._key("name"), self.name, OPTIMIZERS)
        _choice(self._key("schedule"), self.schedule, SCHEDULES)
        if not self.learning_rate > 0:
            raise ValueError(f"optim.learning_rate={self.learning_rate!r}: must be > 0")
        # rsqrt divides by sqrt(max(step, warmup_steps)), so it needs warmup_steps >= 1.
        minimum_warmup = 1 if self.schedule == "rsqrt" else 0
        _at_least(self._key("warmup_steps"), self.warmup_steps, minimum_warmup)
        if not 0 < self.decay_rate <= 1:
            raise ValueError(f"optim.decay_rate={self.decay_rate!r}: must be in (0, 1]")
        _at_least(self._key("weight_decay"), self.weight_decay, 0.0)
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{self._key(name)}={getattr(self, name)!r}: must be in [0, 1)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"optim.grad_clip={self.grad_clip!r}: must be > 0, or null for none")
        _at_least(self._key("schedule_offset"), self.schedule_offset, 0)
        if self.carry_state and self.schedule_offset:
            raise ValueError(
                f"optim.schedule_offset={self.schedule_offset}: with optim.carry_state=True the "
                "restored optimizer state already carries the step count; set it to 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
    """The training loop of the stage (PAPER.md 1.3, 2.1).

    Attributes:
      steps: optimizer steps in this stage (131,072 to pretrain in the study, 10,000 for MTF).
      batch_size: sequences (rows) per global batch (2,048 in the study; ED:PLM packs two examples
        per row, so the study used 1,024 rows there, PAPER.md 2.2).
      microbatches: gradient-accumulation microbatches per step (the study used 8 to pretrain).
      z_loss: coefficient of the auxiliary log^2 Z loss (1e-4 in the study).
      loss_normalization: "sum": the summed token loss (t5x ``loss_normalizing_factor=None``, the
        study); "tokens": divided by the number of loss tokens.
      log_every: steps between metric logs.
      seed: parameter-initialisation and dropout seed.
    """

    SECTION: ClassVar[str] = "train"

    steps: int = 131_072
    batch_size: int = 2_048
    microbatches: int = 1
    z_loss: float = 1e-4
    loss_normalization: str = "sum"
    log_every: int = 10
    seed: int = 0

    def _check(self) -> None:
        for name in ("steps", "batch_size", "microbatches", "log_every"):
            _at_least(self._key(name), getattr(self, name), 1)
        _at_least(self._key("z_loss"), self.z_loss, 0.0)
        _choice(self._key("loss_normalization"), self.loss_normalization, LOSS_NORMALIZATIONS)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(_Section):
    """When checkpoints are written and which are kept.

    Attributes:
      every: save every this many steps (and at the last step).
      keep: how many of the most recent periodic checkpoints to keep.
      keep_steps: steps saved (even off the ``every`` grid) and kept forever, e.g. the study's 42B
        and 84B token points (32,768 and 65,536 steps, PAPER.md 1.3); stored sorted.
      async_save: write checkpoints in the background while training continues.
    """

    SECTION: ClassVar[str] = "checkpoint"

    every: int = 1_000
    keep: int = 3
    keep_steps: tuple[int, ...] = ()
    async_save: bool = True

    def _check(self) -> None:
        _at_least(self._key("every"), self.every, 1)
        _at_least(self._key("keep"), self.keep, 1)
        if any(step < 1 for step in self.keep_steps):
            raise ValueError(f"checkpoint.keep_steps={list(self.keep_steps)}: steps must be >= 1")
        if len(set(self.keep_steps)) != len(self.keep_steps):
            raise ValueError(
                f"checkpoint.keep_steps={list(self.keep_steps)}: steps must not repeat")
        object.__setattr__(self, "keep_steps", tuple(sorted(self.keep_steps)))


@dataclasses.dataclass(frozen=True)
class MeshConfig(_Section):
    """The 2-D ``(data, model)`` device mesh (``models/sharding.py``).

    Attributes:
      data: size of the data axis; -1 takes every device the model axis leaves.
      model: size of the model (tensor-parallel) axis; heads, MLP hidden and vocabulary shard on it.
    """

    SECTION: ClassVar[str] = "mesh"

    data: int = -1
    model: int = 1

    def _check(self) -> None:
        if self.data != -1 and self.data < 1:
            raise ValueError(f"mesh.data={self.data}: must be >= 1, or -1 to fill the devices")
        _at_least(self._key("model"), self.model, 1)

    def shape(self, num_devices: int) -> tuple[int, int]:
        """``(data, model)`` on ``num_devices`` devices.

        Raises:
          ValueError: the mesh does not cover exactly ``num_devices`` devices.
        """
        if num_devices % self.model:
            raise ValueError(f"mesh.model={self.model}: must divide the number of devices "
                             f"({num_devices})")
        data = num_devices // self.model if self.data == -1 else self.data
        if data * self.model != num_devices:
            raise ValueError(
                f"mesh.data={self.data} x mesh.model={self.model} = {data * self.model} devices, "
                f"but {num_devices} are available; set mesh.data=-1 to fill them")
        return data, self.model


@dataclasses.dataclass(frozen=True)
class StageConfig(_Section):
    """Which stage this run is and where it starts (PAPER.md 1.3).

    Attributes:
      kind: "pretrain" (from scratch), "adapt" (continue pretraining, possibly with another mask or
        objective: LM-A, NC-A) or "finetune" (multitask finetuning, objective "mtf").
      init_from: the run directory whose parameters the stage starts from (restored through orbax);
        required by adapt and finetune, forbidden for pretrain.
      init_step: the step of ``init_from`` to restore; None for its latest.
    """

    SECTION: ClassVar[str] = "stage"

    kind: str = "pretrain"
    init_from: Optional[str] = None
    init_step: Optional[int] = None

    def _check(self) -> None:
        _choice(self._key("kind"), self.kind, STAGE_KINDS)
        if self.kind == "pretrain" and self.init_from is not None:
            raise ValueError(
                f"stage.init_from={self.init_from!r}: a pretrain stage starts from scratch; use "
                "stage.kind=adapt or finetune to start from another run")
        if self.kind != "pretrain" and not self.init_from:
            raise ValueError(
                f"stage.init_from={self.init_from!r}: stage.kind={self.kind!r} starts from a "
                "previous run; set stage.init_from to its run directory")
        if self.init_step is not None:
            if self.init_from is None:
                raise ValueError(f"stage.init_step={self.init_step}: needs stage.init_from")
            _at_least(self._key("init_step"), self.init_step, 0)


@dataclasses.dataclass(frozen=True)
class EvalConfig(_Section):
    """Evaluation during the stage (filled in by the evaluation issues; here only checked).

    Attributes:
      every: evaluate every this many steps; 0 evaluates only at the end.
      suites: suites to run, from ``EVAL_SUITES`` (PAPER.md 3.1 EAI-Eval, 3.2 T0-Eval).
    """

    SECTION: ClassVar[str] = "eval"

    every: int = 0
    suites: tuple[str, ...] = ()

    def _check(self) -> None:
        _at_least(self._key("every"), self.every, 0)
        for suite in self.suites:
            _choice("eval.suites", suite, EVAL_SUITES)
        if len(set(self.suites)) != len(self.suites):
            raise ValueError(f"eval.suites={list(self.suites)}: suites must not repeat")


# The sections of a RunConfig, by key, in file order.
SECTIONS: dict[str, type] = {
    "model": ModelSection, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig,
    "checkpoint": CheckpointConfig, "mesh": MeshConfig, "stage": StageConfig, "eval": EvalConfig,
}
# Top-level scalar keys.
SCALARS: dict[str, Any] = {"name": str, "run_dir": str}
DEFAULT_NAME = "run"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training stage of one cell: the composed, frozen configuration.

    Attributes:
      name: the run's name (letters, digits and ``_.+=-``), e.g. ``cd_flm`` or
        ``cd_flm_131072-nd_mlm_171008``.
      run_dir: where the stage writes ``config.json``, checkpoints and metrics; ``load_config``
        defaults it to ``runs/<name>``.
      model, data, optim, train, checkpoint, mesh, stage, eval: the sections.

    The model's embedding fits the data's vocabulary: unless ``model.vocab_size`` is set to
    something other than the preset's, a preset whose table is smaller than
    ``data.vocabulary``'s ids (the ``tiny`` preset's 128 rows against the byte vocabulary's 359)
    is sized up to the vocabulary, rounded up to a multiple of 128 as the study pads T5's 32,100
    ids to 32,128 (``model_config().vocab_size`` is then 384). An explicit ``model.vocab_size``
    that is too small is ``validate``'s error.
    """

    name: str = DEFAULT_NAME
    run_dir: str = os.path.join("runs", DEFAULT_NAME)
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    stage: StageConfig = dataclasses.field(default_factory=StageConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    _model: ModelConfig = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = _coerce("name", self.name, str)
        if not _NAME_PATTERN.match(name):
            raise ValueError(f"name={name!r}: use letters, digits and '_.+=-', starting with a "
                             "letter or digit")
        if not _coerce("run_dir", self.run_dir, str):
            raise ValueError("run_dir='': must name a directory")
        for key, cls in SECTIONS.items():
            if not isinstance(getattr(self, key), cls):
                raise ValueError(f"{key}={getattr(self, key)!r}: expected a {cls.__name__}")
        model = self.model.config
        if "vocab_size" not in dict(self.model.overrides):
            ids = _vocabulary_ids(self.data.vocabulary)
            if ids is not None and model.vocab_size < ids:
                padded = -(-ids // VOCAB_SIZE_MULTIPLE) * VOCAB_SIZE_MULTIPLE
                model = dataclasses.replace(model, vocab_size=padded)
        object.__setattr__(self, "_model", model)

    def model_config(self) -> ModelConfig:
        """The resolved ``ModelConfig`` (the section's, its embedding fitted to the vocabulary)."""
        return self._model

    def task_lengths(self) -> dict[str, int]:
        """The seqio task feature lengths of this stage (``DataConfig.task_lengths``)."""
        return self.data.task_lengths(self.model.architecture)


# -------------------------------------------------------------------------------------------------
# Building: a nested "spec" mapping of explicitly set keys, then the dataclasses.
# -------------------------------------------------------------------------------------------------

def _unknown_key_message(key: str, section: Optional[str], valid: Sequence[str]) -> str:
    where = f"valid keys in {section!r}" if section else "valid top-level keys"
    last = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(last, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r}; {where}: {sorted(valid)}{hint}"


def _section_keys(section: str) -> dict[str, Any]:
    """``{key: type}`` of a section."""
    if section == "model":
        types_by_name = dict(_field_types(ModelConfig))  # a copy: the cached one is shared
        types_by_name["preset"] = str
        return types_by_name
    return _field_types(SECTIONS[section])


def _set(spec: dict[str, Any], key: str, value: Any) -> None:
    """Sets dotted ``key`` in ``spec`` (``{"train": {"steps": 10}, "name": ...}``), type-checked.

    A section key with a mapping value sets each of its keys (``train={steps: 10}``).

    Raises:
      ValueError: an unknown key, a section given a non-mapping, or a value of the wrong type.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"key {key!r}: must be a non-empty string such as 'train.steps'")
    section, _, rest = key.partition(".")
    if section in SCALARS:
        if rest:
            raise ValueError(f"unknown key {key!r}; {section!r} is a value, not a section")
        spec[section] = _coerce(section, value, SCALARS[section])
        return
    if section not in SECTIONS:
        raise ValueError(_unknown_key_message(key, None, [*SCALARS, *SECTIONS]))
    if not rest:
        if not isinstance(value, Mapping):
            raise ValueError(f"{section}={value!r}: a section must be a mapping of keys, e.g. "
                             f"{section}.<key>=<value>")
        for name, item in value.items():
            _set(spec, f"{section}.{name}", item)
        return
    valid = _section_keys(section)
    if rest not in valid:
        raise ValueError(_unknown_key_message(key, section, list(valid)))
    spec.setdefault(section, {})[rest] = _coerce(key, value, valid[rest])


def _build(spec: Mapping[str, Any]) -> RunConfig:
    """The ``RunConfig`` of a spec; missing keys take the dataclass defaults."""
    name = spec.get("name", DEFAULT_NAME)
    sections: dict[str, Any] = {"model": ModelSection.from_mapping(spec.get("model", {}))}
    for key, cls in SECTIONS.items():
        if key != "model":
            sections[key] = cls(**spec.get(key, {}))
    return RunConfig(name=name, run_dir=spec.get("run_dir", os.path.join("runs", name)),
                     **sections)


def _spec(config: RunConfig) -> dict[str, Any]:
    """The spec of a config: every value explicit, the model as preset + overrides."""
    spec: dict[str, Any] = {"name": config.name, "run_dir": config.run_dir,
                            "model": config.model.to_mapping()}
    for key in SECTIONS:
        if key != "model":
            spec[key] = dataclasses.asdict(getattr(config, key))
    return spec


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["train.steps=100", "checkpoint.keep_steps=[1,2]"]`` -> ``{key: YAML-parsed value}``.

    Later entries win. Values are parsed with ``yaml.safe_load`` (``100`` -> int, ``true`` -> bool,
    ``null`` -> None, ``[1, 2]`` -> list); the type check happens when they are applied.

    Raises:
      ValueError: an entry without ``=`` or a value that is not valid YAML.
    """
    parsed: dict[str, Any] = {}
    for entry in overrides:
        key, equals, text = str(entry).partition("=")
        key = key.strip()
        if not equals or not key:
            raise ValueError(f"override {entry!r}: expected key=value, e.g. train.steps=100")
        try:
            parsed[key] = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"override {entry!r}: value is not valid YAML "
                             f"({_one_line(e)})") from None
    return parsed


def _read_yaml(path: pathlib.Path) -> dict[str, Any]:
    """The top-level mapping of a YAML (or JSON) config file; ``{}`` for an empty file."""
    if not path.is_file():
        raise ValueError(f"{path}: config file does not exist")
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the config file ({_one_line(e)})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({_one_line(e)})") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ValueError(f"{path}: must hold a mapping of sections ({sorted(SECTIONS)}), found "
                         f"{type(document).__name__}")
    # A run's config.json ({"model": ..., "run": to_dict(config)}) loads as the run's config.
    if isinstance(document.get(RUN_KEY), dict):
        document = document[RUN_KEY]
    for key, value in list(document.items()):
        if key in SECTIONS and value is None:  # a section whose keys are all commented out
            document[key] = {}
        elif key in SECTIONS and not isinstance(value, dict):
            raise ValueError(f"{path}: section {key!r} must be a mapping of keys, found "
                             f"{type(value).__name__} {value!r}")
    return document


def load_config(path: Optional[Union[str, os.PathLike]] = None,
                overrides: Sequence[str] = ()) -> RunConfig:
    """Builds the configuration from a YAML file and ``key=value`` overrides.

    Args:
      path: a YAML file of sections (``model: {preset: small}``, ``train: {steps: 100}``, ...) and
        top-level ``name`` / ``run_dir``; or a run's ``config.json``; None for the defaults (the
        study's CD:FLM pretraining run, see the module docstring).
      overrides: ``--set`` entries with dotted keys, applied in order after the file:
        ``train.steps=100``, ``model.dropout_rate=0.1``, ``checkpoint.keep_steps=[32768,65536]``.

    Returns:
      The frozen, section-checked ``RunConfig``. Cross-field checks are ``validate``'s.

    Raises:
      ValueError: one line naming the file or the dotted key: a missing or malformed file, a file
        or section that is not a mapping, an unknown key, a value of the wrong type or range.
    """
    spec: dict[str, Any] = {}
    if path is not None:
        path = pathlib.Path(path)
        for key, value in _read_yaml(path).items():
            try:
                _set(spec, key, value)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
    for key, value in parse_overrides(overrides).items():
        _set(spec, key, value)
    return _build(spec)


def with_overrides(config: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    """A copy of ``config`` with dotted-key overrides applied (values already typed, not strings).

    The way grid cells are made as deltas on a base (``experiments/grid.py``)::

        with_overrides(base, {"name": "ed_mlm", "run_dir": "runs/ed_mlm",
                              "model.architecture": "ed", "data.objective": "mlm"})

    Model overrides act on the section's preset + overrides, so ``model.architecture=ed`` re-derives
    the encoder layers and ``model.preset=base`` keeps e.g. ``dropout_rate``. ``run_dir`` is not
    re-derived from a new ``name``: set both.

    Raises:
      ValueError: an unknown key or a bad value, naming the dotted key.
    """
    spec = _spec(config)
    for key, value in overrides.items():
        _set(spec, key, value)
    return _build(spec)


# -------------------------------------------------------------------------------------------------
# Cross-field checks.
# -------------------------------------------------------------------------------------------------

def validate(config: RunConfig, num_devices: int) -> None:
    """Checks that the sections fit together, before anything is compiled (STYLE.md B4).

    Checks, in order: architecture x objective (PAPER.md 1.2: cd with flm/mlm, nd and ed with
    plm/mlm; mtf with every architecture); stage x objective (finetune is mtf, and only finetune
    is); lengths vs objective (``objectives/lengths.py``); model vocabulary vs ``data.vocabulary``;
    the mesh covers ``num_devices``; model-axis dimensions divide the model axis; the batch divides
    over the data axis and into microbatches; ``checkpoint.keep_steps`` within ``train.steps``;
    the cosine warmup ends before ``train.steps``; ``optim.carry_state`` needs ``stage.init_from``;
    ``stage.init_from`` is another directory. It reads no file: the files the config names are
    ``check_inputs``'s, and the run directory is ``harness.train.run_record.check_resume``'s
    (``harness.train.loop.preflight`` runs all three).

    Args:
      config: the configuration.
      num_devices: devices the run will use (``jax.device_count()``).

    Raises:
      ValueError: the first failed check, in one line naming the fields and their values.
    """
    model = config.model_config()
    data, train = config.data, config.train
    architecture, objective = model.architecture, data.objective

    if objective != "mtf" and objective not in tasks.COMPATIBLE[architecture]:
        raise ValueError(
            f"data.objective={objective!r} with model.architecture={architecture!r}: the study "
            f"pretrains {architecture} with {list(tasks.COMPATIBLE[architecture])} (PAPER.md 1.2)")
    if (config.stage.kind == "finetune") != (objective == "mtf"):
        raise ValueError(
            f"stage.kind={config.stage.kind!r} with data.objective={objective!r}: multitask "
            "finetuning is stage.kind='finetune' with data.objective='mtf'; pretrain and adapt use "
            f"{list(PRETRAINING_OBJECTIVES)}")

    try:
        lengths = config.task_lengths()
        if objective != "mtf":
            lengths_lib.validate_task_feature_lengths(objective, architecture, lengths)
    except ValueError as e:
        raise ValueError(f"data.{e} (data.objective={objective!r}, "
                         f"model.architecture={architecture!r})") from None

    needed = VOCABULARY_IDS.get(data.vocabulary)
    if needed is not None and model.vocab_size < needed:
        raise ValueError(
            f"model.vocab_size={model.vocab_size}: data.vocabulary={data.vocabulary!r} has "
            f"{needed} ids; set model.vocab_size >= {needed} (the study pads to a multiple of "
            "128) or leave it to the preset, which is sized to the vocabulary")

    if not isinstance(num_devices, int) or num_devices < 1:
        raise ValueError(f"num_devices={num_devices!r}: must be a positive integer")
    data_axis, model_axis = config.mesh.shape(num_devices)
    for name in ("num_heads", "d_ff", "vocab_size"):  # sharded over the model axis
        if getattr(model, name) % model_axis:
            raise ValueError(
                f"model.{name}={getattr(model, name)}: must be divisible by mesh.model="
                f"{model_axis} (it is sharded over the model axis, models/sharding.py)")

    if train.batch_size % data_axis:
        raise ValueError(
            f"train.batch_size={train.batch_size}: must be divisible by the data axis "
            f"(mesh.data={data_axis} on {num_devices} devices)")
    if train.batch_size % train.microbatches:
        raise ValueError(f"train.batch_size={train.batch_size}: must be divisible by "
                         f"train.microbatches={train.microbatches}")
    microbatch = train.batch_size // train.microbatches
    if microbatch % data_axis:
        raise ValueError(
            f"train.batch_size={train.batch_size} / train.microbatches={train.microbatches} = "
            f"{microbatch} rows per microbatch: must be divisible by the data axis "
            f"(mesh.data={data_axis})")

    if config.optim.schedule == "cosine" and config.optim.warmup_steps >= train.steps:
        raise ValueError(
            f"optim.warmup_steps={config.optim.warmup_steps}: the cosine schedule decays after its "
            f"warmup, so it must be < train.steps={train.steps}")
    late = [step for step in config.checkpoint.keep_steps if step > train.steps]
    if late:
        raise ValueError(f"checkpoint.keep_steps={list(config.checkpoint.keep_steps)}: steps "
                         f"{late} are past train.steps={train.steps}")
    if config.optim.carry_state and config.stage.init_from is None:
        raise ValueError("optim.carry_state=True: needs stage.init_from, the run whose optimizer "
                         "state to restore")
    if (config.stage.init_from is not None
            and os.path.normpath(config.stage.init_from) == os.path.normpath(config.run_dir)):
        raise ValueError(
            f"stage.init_from={config.stage.init_from!r}: is run_dir itself; a stage writes into "
            "a new run_dir (an interrupted run resumes from its own checkpoints without init_from)")


def check_inputs(config: RunConfig) -> None:
    """Checks that what the stage reads is there, in milliseconds, before anything is written.

    ``validate`` checks that the sections fit together; this checks the files they name, so that a
    typo costs no model build and no compile and leaves nothing behind in the run directory:

    * ``data.source``: a local corpus exists, lists, opens and starts with two documents
      (``objectives.sources.check_local_corpus``); a local T0 directory holds readable
      ``<dataset>__<template>.jsonl`` files that start with a valid example
      (``objectives.t0.check_jsonl_directory``). C4 and ``t0-hf`` are read over the network or from
      a TFDS directory and are checked when the pipeline opens them.
    * ``data.vocabulary``: a local SentencePiece model (or ``$ARCHOBJ_T5_SPM``) reads as a model on
      T5's ids, and the model's embedding has a row for each of its ids.
    * ``stage.init_from``: a directory with a ``config.json``, holding ``stage.init_step`` if set.

    Raises:
      ValueError: the first problem, in one line naming the key, the path and the fix.
    """
    data = config.data
    try:
        if data.objective == "mtf":
            if data.source != T0_HF_SOURCE:
                t0_lib.check_jsonl_directory(data.source)
        elif data.source not in C4_SOURCES:
            sources_lib.check_local_corpus(data.source, data.text_field)
    except ValueError as e:
        raise ValueError(_keyed(e, "source ", "data.source", data.source)) from None
    try:
        ids = vocab_lib.vocabulary_ids(data.vocabulary)
    except ValueError as e:
        raise ValueError(_keyed(e, "vocabulary ", "data.vocabulary", data.vocabulary)) from None
    vocab_size = config.model_config().vocab_size
    if ids is not None and vocab_size < ids:
        raise ValueError(
            f"model.vocab_size={vocab_size}: data.vocabulary={data.vocabulary!r} has {ids} ids; "
            f"set model.vocab_size >= {ids} or leave it to the preset, which is sized to the "
            "vocabulary")

    stage = config.stage
    if stage.init_from is not None:
        upstream = pathlib.Path(stage.init_from)
        if not (upstream / CONFIG_FILE).is_file():
            what = ("does not exist" if not upstream.exists()
                    else f"has no {CONFIG_FILE}, so it is not a run or model directory")
            raise ValueError(f"stage.init_from={stage.init_from!r}: {what}; point it at the run "
                             "directory of the stage this one starts from")
        steps = checkpoint_steps(upstream)
        if stage.init_step is not None and stage.init_step not in steps:
            raise ValueError(f"stage.init_step={stage.init_step}: {stage.init_from} has no "
                             f"checkpoint of that step (it has {steps}); choose one of them")


def _keyed(error: ValueError, prefix: str, key: str, value: str) -> str:
    """``"source 'x': no such file"`` -> ``"data.source='x': no such file"``: the config's key."""
    message = str(error)
    if message.startswith(prefix):
        return key + "=" + message[len(prefix):]
    return f"{key}={value!r}: {message}"


def _vocabulary_ids(vocabulary: str) -> Optional[int]:
    """The ids of ``vocabulary``, or None where it cannot be read (``check_inputs`` says why)."""
    try:
        return vocab_lib.vocabulary_ids(vocabulary)
    except ValueError:
        return None


def tokens_per_row(config: RunConfig) -> int:
    """Tokens one row of this stage's batches holds (encoder + decoder): the tokens it sees, on
    which the study matches compute (PAPER.md 1.2: 626 for every pretraining objective; an ED:PLM
    row packs two examples, 626 + 626)."""
    lengths = config.task_lengths()
    if "decoder_target_tokens" in lengths:  # pass-through features (PLM)
        return lengths["decoder_target_tokens"] + lengths.get("encoder_input_tokens", 0)
    return lengths.get("inputs", 0) + lengths["targets"]


def flops_per_row(config: RunConfig) -> float:
    """Analytic training FLOPs of one row of this stage's batches (PERF.md; models/flops.py)."""
    model = config.model_config()
    lengths = config.task_lengths()
    if model.is_encoder_decoder:
        inputs = lengths.get("inputs", lengths.get("encoder_input_tokens", 0))
        targets = lengths.get("targets", lengths.get("decoder_target_tokens", 0))
        return flops_lib.encoder_decoder_flops(model, inputs, targets).total
    total = sum(lengths.get(k, 0) for k in ("inputs", "targets")) or lengths["targets"]
    prefix = lengths.get("inputs", total // 2 if config.data.objective == "plm" else 0)
    return flops_lib.decoder_only_flops(model, total, prefix if model.architecture == "nd" else 0
                                        ).total


# -------------------------------------------------------------------------------------------------
# Resolved form: JSON and config.json.
# -------------------------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return value


def to_dict(config: RunConfig) -> dict[str, Any]:
    """The fully resolved configuration as JSON-serialisable data.

    ``model`` holds ``preset`` and every resolved ``ModelConfig`` field; the other sections every
    field. ``config_from_dict`` reads it back to an equal ``RunConfig``.
    """
    document: dict[str, Any] = {"name": config.name, "run_dir": config.run_dir,
                                "model": {"preset": config.model.preset,
                                          **config.model_config().to_dict()}}
    for key in SECTIONS:
        if key != "model":
            document[key] = _jsonable(dataclasses.asdict(getattr(config, key)))
    return document


def config_from_dict(document: Mapping[str, Any]) -> RunConfig:
    """The ``RunConfig`` of a mapping in ``to_dict``'s form (partial mappings take the defaults).

    Raises:
      ValueError: an unknown key or a bad value, naming the dotted key.
    """
    if not isinstance(document, Mapping):
        raise ValueError(f"config: expected a mapping of sections, found {type(document).__name__}")
    spec: dict[str, Any] = {}
    for key, value in document.items():
        _set(spec, key, value)
    return _build(spec)


def write_resolved(config: RunConfig, run_dir: Optional[Union[str, os.PathLike]] = None,
                   resume: Optional[Mapping[str, Any]] = None) -> pathlib.Path:
    """Writes ``<run_dir>/config.json`` before step 0, in ``harness/storage/checkpoint.py``'s format.

    Sets ``"model"`` to ``ModelConfig.to_dict()`` (what ``harness.storage.checkpoint.read_config`` reads)
    and ``"run"`` to ``to_dict(config)``; other top-level keys of an existing file (provenance,
    earlier resumes) are kept. The write is atomic (write, then rename). On several hosts, call it
    on process 0 only. Whether the run may be written there at all is
    ``harness.train.run_record.check_resume``'s question, asked first.

    Args:
      config: the configuration.
      run_dir: the directory; ``config.run_dir`` by default. Created if missing.
      resume: a restart to append to the ``"resumes"`` list (``harness.train.run_record.resume_entry``).

    Returns:
      The path of ``config.json``.

    Raises:
      ValueError: the existing ``config.json`` is unreadable or not a JSON object, or it describes a
        different model while the directory already holds checkpoints (they would no longer load).
    """
    directory = pathlib.Path(config.run_dir if run_dir is None else run_dir)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory}: exists and is not a directory; choose another run_dir")
    path = directory / CONFIG_FILE
    document: dict[str, Any] = {}
    if path.exists():
        try:
            document = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({_one_line(e)}); restore or remove it"
                             ) from None
        if not isinstance(document, dict):
            raise ValueError(f"{path}: must hold a JSON object, found {type(document).__name__}; "
                             "restore or remove it")
    model = config.model_config().to_dict()
    stored = document.get(MODEL_KEY)
    if stored is not None and stored != model and checkpoint_steps(directory):
        changed = sorted(k for k in model
                         if not isinstance(stored, dict) or stored.get(k) != model[k])
        raise ValueError(
            f"{path}: holds a different model (fields {changed} differ) and {directory} already "
            "has checkpoints; write the stage into a new run_dir")
    document[MODEL_KEY] = model
    document[RUN_KEY] = to_dict(config)
    if resume is not None:
        document[RESUMES_KEY] = [*document.get(RESUMES_KEY, []), dict(resume)]
    directory.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)
    return path


def checkpoint_steps(directory: Union[str, os.PathLike]) -> list[int]:
    """The committed steps of a run or model directory, ascending, read without orbax: the
    ``checkpoints/<step>`` directories (a save in progress is ``<step>.orbax-checkpoint-tmp``)."""
    checkpoints = pathlib.Path(directory) / CHECKPOINTS_DIR
    if not checkpoints.is_dir():
        return []
    return sorted(int(entry.name) for entry in checkpoints.iterdir()
                  if entry.name.isdigit() and entry.is_dir())


def flatten(document: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"steps": 6}}`` -> ``{"train.steps": 6}``: ``to_dict``'s form by dotted key."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
