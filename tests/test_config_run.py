"""The run configuration (harness/train/config.py): loading, overrides, validation, resolved JSON."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

from harness.storage import checkpoint
from harness.train import config as run_config
from helpers import assert_one_line_error
from models.config import ModelConfig, preset
from objectives import lengths as lengths_lib

# A small, valid CPU-sized stage used as the base of most cases.
SMALL = ["model.preset=small", "train.steps=100", "train.batch_size=16", "data.source=corpus.txt"]


def small(*overrides: str) -> run_config.RunConfig:
    return run_config.load_config(None, [*SMALL, *overrides])


def write(tmp_path, text: str, name: str = "stage.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_are_the_studys_cd_flm_pretraining_and_validate():
    config = run_config.load_config(None)
    run_config.validate(config, num_devices=8)
    run_config.validate(config, num_devices=1)
    # PAPER.md 1.3 and 2.1: 131,072 steps x 2,048 x 626 tokens (168B; the product is
    # 168,040,595,456, not the 168,040,513,536 PAPER.md 1.3 prints); the 4.8B decoder.
    tokens = config.train.steps * config.train.batch_size * config.data.total_length
    assert tokens == 131_072 * 1_282_048 == 168_040_595_456
    assert config.model_config() == preset("paper-decoder", "cd")
    assert (config.optim.name, config.optim.schedule, config.optim.learning_rate,
            config.optim.warmup_steps, config.optim.decay_rate) == ("adafactor", "rsqrt", 1.0,
                                                                     10_000, 0.8)
    assert (config.train.z_loss, config.train.loss_normalization) == (1e-4, "sum")
    assert config.task_lengths() == {"targets": 626}
    assert config == run_config.RunConfig()  # load_config(None) is the dataclass defaults
    assert hash(config) == hash(run_config.RunConfig())  # frozen all the way down


def test_yaml_file_and_overrides_resolve(tmp_path):
    path = write(tmp_path, """
        name: nd_plm
        model: {preset: small, architecture: nd, dropout_rate: 0.1, dtype: float32}
        data:
          objective: plm
          source: corpus.txt
          vocabulary: spm.model
          total_length: 128
        optim: {learning_rate: 1e-3, schedule: constant}   # YAML 1.1 reads 1e-3 as a string
        train: {steps: 1000, batch_size: 32, microbatches: 2}
        eval:
    """)
    config = run_config.load_config(path, [
        "train.steps=100", "checkpoint.keep_steps=[40, 20]", "train.steps=50", "mesh.model=2",
        "model.remat_policy=full", "optim.grad_clip=1"])
    run_config.validate(config, num_devices=8)
    model = config.model_config()
    assert model == preset("small", "nd", dropout_rate=0.1, dtype="float32", remat_policy="full")
    assert config.name == "nd_plm" and config.run_dir == "runs/nd_plm"
    assert config.train.steps == 50  # later overrides win
    assert config.train.microbatches == 2
    assert config.optim.learning_rate == 1e-3 and config.optim.grad_clip == 1.0
    assert isinstance(config.optim.grad_clip, float)
    assert config.checkpoint.keep_steps == (20, 40)  # canonical: a sorted tuple
    assert config.mesh.shape(8) == (4, 2)
    assert config.eval == run_config.EvalConfig()  # an empty section is the defaults
    assert config.task_lengths()["decoder_input_tokens"] == 128
    assert dict(config.model.overrides) == {"dropout_rate": 0.1, "dtype": "float32",
                                            "remat_policy": "full"}


def test_with_overrides_makes_grid_deltas():
    base = small("model.dropout_rate=0.1")
    cell = run_config.with_overrides(base, {"name": "ed_mlm", "run_dir": "runs/ed_mlm",
                                            "model.architecture": "ed", "data.objective": "mlm"})
    run_config.validate(cell, num_devices=8)
    # The preset re-derives the encoder; the real override (dropout) stays.
    assert cell.model_config() == preset("small", "ed", dropout_rate=0.1)
    assert cell.task_lengths() == {"inputs": 512, "targets": 114}
    bigger = run_config.with_overrides(cell, {"model.preset": "base"})
    assert bigger.model_config() == preset("base", "ed", dropout_rate=0.1)
    assert base.model_config().architecture == "cd"  # the base is unchanged (frozen)


def test_mtf_stage_for_every_architecture():
    for architecture in ("cd", "nd", "ed"):
        config = small(f"model.architecture={architecture}", "data.objective=mtf",
                       "data.source=t0-hf", "stage.kind=finetune", "stage.init_from=runs/pre",
                       "optim.schedule=constant", "optim.learning_rate=1e-3")
        run_config.validate(config, num_devices=8)
        assert config.task_lengths() == lengths_lib.MTF_LENGTHS
    config = run_config.with_overrides(config, {"data.targets_length": 64})
    assert config.task_lengths() == {"inputs": 1024, "targets": 64}


def test_resolved_json_round_trips():
    config = small("model.architecture=ed", "data.objective=mlm", "model.dropout_rate=0.1",
                   "checkpoint.keep_steps=[10, 20]", "eval.suites=[t0, eai]", "optim.grad_clip=1.0",
                   "stage.kind=adapt", "stage.init_from=runs/pre", "stage.init_step=7")
    document = json.loads(json.dumps(run_config.to_dict(config)))
    fields = {f for f in ModelConfig.__dataclass_fields__}
    assert fields | {"preset"} == set(document["model"])
    assert document["model"]["num_encoder_layers"] == 8
    assert run_config.config_from_dict(document) == config
    assert run_config.config_from_dict(document).model_config() == config.model_config()


def test_write_resolved_keeps_checkpoint_format(tmp_path):
    config = small("model.preset=tiny", "data.vocabulary=spm.model")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"provenance": {"from": "x"}}))
    path = run_config.write_resolved(config, run_dir)
    assert path == run_dir / checkpoint.CONFIG_FILE
    assert checkpoint.read_config(run_dir) == config.model_config()
    document = json.loads(path.read_text())
    assert document["provenance"] == {"from": "x"}  # other keys are kept
    assert run_config.config_from_dict(document["run"]) == config
    assert run_config.load_config(path) == config  # a run's config.json loads as its config
    # The same constants as harness/storage/checkpoint.py, which this module does not import.
    assert (run_config.CONFIG_FILE, run_config.CHECKPOINTS_DIR, run_config.MODEL_KEY) == (
        checkpoint.CONFIG_FILE, checkpoint.CHECKPOINTS_DIR, checkpoint.MODEL_KEY)

    # Once checkpoints exist, a different model would make them unreadable: refuse.
    (run_dir / "checkpoints" / "0").mkdir(parents=True)
    run_config.write_resolved(run_config.with_overrides(config, {"train.steps": 200}), run_dir)
    with pytest.raises(ValueError) as excinfo:
        run_config.write_resolved(run_config.with_overrides(config, {"model.d_model": 64}),
                                  run_dir)
    assert_one_line_error(excinfo, str(path), "['d_model']", "new run_dir")
    assert checkpoint.read_config(run_dir) == config.model_config()


@pytest.mark.parametrize("overrides,needles", [
    (["train.step=10"], ["unknown key 'train.step'; valid keys in 'train': [", "'steps'"]),
    (["trainer.steps=10"], ["unknown key 'trainer.steps'; valid top-level keys: ["]),
    (["model.n_layers=2"], ["unknown key 'model.n_layers'; valid keys in 'model': [", "'preset'",
                            "'num_layers'"]),
    (["train.steps=ten"], ["train.steps='ten': expected int"]),
    (["train.steps=true"], ["train.steps=True: expected int"]),
    (["data.pack=1"], ["data.pack=1: expected bool"]),
    (["optim.learning_rate=fast"], ["optim.learning_rate='fast': expected float"]),
    (["checkpoint.keep_steps=[1, two]"],
     ["checkpoint.keep_steps=[1, 'two']: expected list of int"]),
    (["model.dropout_rate=1.5"], ["model.dropout_rate=1.5: must be in [0, 1)"]),
    (["model.preset=huge"], ["model.preset='huge'", "'paper-decoder'"]),
    (["train=5"], ["train=5: a section must be a mapping"]),
    (["train.steps"], ["override 'train.steps': expected key=value"]),
    (["stage.kind=adapt"], ["stage.init_from=None", "stage.kind='adapt'"]),
    (["stage.init_from=runs/x"], ["stage.init_from='runs/x'", "pretrain"]),
    (["data.objective=mtf", "data.source=c4"], ["data.source='c4'", "t0-hf"]),
    (["data.inputs_length=64"], ["data.inputs_length=64", "data.objective='mtf'"]),
    (["optim.name=sgd"], ["optim.name='sgd': must be one of ['adafactor', 'adafactor_optax', 'adamw']"]),
    (["train.loss_normalization=mean"], ["train.loss_normalization='mean'", "'sum'"]),
    (["eval.suites=[mmlu]"], ["eval.suites='mmlu'"]),
])
def test_bad_keys_and_values_name_the_key(overrides, needles):
    with pytest.raises(ValueError) as excinfo:
        small(*overrides)
    assert_one_line_error(excinfo, *needles)


@pytest.mark.parametrize("overrides,num_devices,needles", [
    (["data.objective=plm"], 8,
     ["data.objective='plm'", "model.architecture='cd'", "['flm', 'mlm']"]),
    (["model.architecture=ed"], 8, ["data.objective='flm'", "model.architecture='ed'"]),
    (["train.batch_size=12"], 8, ["train.batch_size=12", "mesh.data=8"]),
    (["train.microbatches=3"], 8, ["train.batch_size=16", "train.microbatches=3"]),
    (["train.microbatches=4"], 8, ["train.microbatches=4", "4 rows per microbatch", "mesh.data=8"]),
    (["mesh.data=2", "mesh.model=2"], 8, ["mesh.data=2 x mesh.model=2 = 4 devices", "8"]),
    (["mesh.model=4"], 8, ["model.num_heads=6", "mesh.model=4"]),
    (["data.objective=mlm", "data.total_length=8"], 8, ["data.total_length=8", "span corruption"]),
    (["model.architecture=nd", "data.objective=plm", "data.total_length=63"], 8,
     ["data.total_length=63", "even"]),
    (["model.preset=tiny", "model.vocab_size=256"], 8,
     ["model.vocab_size=256", "data.vocabulary='t5'", "32100"]),
    (["checkpoint.keep_steps=[50, 500]"], 8, ["checkpoint.keep_steps=[50, 500]", "[500]",
                                             "train.steps=100"]),
    (["stage.kind=finetune", "stage.init_from=runs/x"], 8, ["stage.kind='finetune'",
                                                            "data.objective='flm'"]),
    (["optim.carry_state=true"], 8, ["optim.carry_state=True", "stage.init_from"]),
    (["stage.kind=adapt", "stage.init_from=runs/run"], 8, ["stage.init_from='runs/run'",
                                                           "run_dir"]),
    (["optim.schedule=cosine", "optim.warmup_steps=100"], 8, ["optim.warmup_steps=100",
                                                              "train.steps=100"]),
])
def test_validate_names_the_fields(overrides, num_devices, needles):
    config = small(*overrides)
    with pytest.raises(ValueError) as excinfo:
        run_config.validate(config, num_devices)
    assert_one_line_error(excinfo, *needles)


@pytest.mark.parametrize("text,needles", [
    ("trainer: {steps: 10}\n", ["unknown key 'trainer'", "valid top-level keys"]),
    ("train: {step: 10}\n", ["unknown key 'train.step'", "valid keys in 'train'"]),
    ("train: {steps: ten}\n", ["train.steps='ten': expected int"]),
    ("train: {steps: 10\n", ["not valid YAML"]),
    ("- train\n- data\n", ["must hold a mapping of sections", "found list"]),
    ("train: 10\n", ["section 'train' must be a mapping", "found int"]),
])
def test_bad_files_name_the_file(tmp_path, text, needles):
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as excinfo:
        run_config.load_config(path)
    assert_one_line_error(excinfo, str(path), *needles)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ValueError) as excinfo:
        run_config.load_config(tmp_path / "absent.yaml")
    assert_one_line_error(excinfo, "absent.yaml", "does not exist")


def test_sections_check_their_own_fields_when_built_directly():
    with pytest.raises(ValueError) as excinfo:
        run_config.TrainConfig(steps=0)
    assert_one_line_error(excinfo, "train.steps=0: must be >= 1")
    with pytest.raises(ValueError) as excinfo:
        run_config.TrainConfig(steps="10")
    assert_one_line_error(excinfo, "train.steps='10': expected int")
    with pytest.raises(ValueError) as excinfo:
        run_config.ModelSection(preset="tiny", overrides={"num_heads": 5, "head_dim": None})
    assert_one_line_error(excinfo, "model.num_heads=5: must divide d_model=32")
    assert run_config.OptimConfig(learning_rate=1).learning_rate == 1.0  # ints accepted as floats


def test_imports_neither_tensorflow_nor_seqio_nor_jax():
    # Configs are built and checked before anything heavy starts: an error costs milliseconds.
    code = ("import sys, harness.train.config, harness.train.run_record; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('tensorflow', 'seqio', 'jax', 'orbax')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=pathlib.Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "[]", result.stdout
