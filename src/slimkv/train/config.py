"""The run config of `slimkv train`: six sections (model / data / optim / train / eval / log) of typed dataclasses.

Load with `load_run_config("configs/tiny.yaml", ["--optim.lr=3e-4"])`; every field can be overridden with
`--section.field=value`. Each field's comment (the line above it) is its documentation; every numeric field
declares its range (`ranged(default, ge=...)`, checked with the field named, before anything is written).
"""
from __future__ import annotations

import os
import typing
from dataclasses import dataclass, field, make_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ..config import check_ranges, config_from_dict, load_config, ranged, setting
from ..data.files import data_root
from ..models.factory import model_config, model_options


@dataclass
class ModelSection:
    """The run-level part of the `model` section: which network, its vocabulary and its depth. ModelConfig adds
    every option of the network's own config (models/factory.py `model_options`), under that config's names."""

    # which network: a slimkv block type (rodimus: pure recurrent; rodimus_plus: recurrent + sliding-window
    # shared-key attention; mamba2 / gla: the baselines on the same scaffolding, mem_size their state knob) or
    # llama, the Transformer baseline
    arch: str = "rodimus_plus"
    # token vocabulary; 0 = take it from the data's tokenizer
    vocab_size: int = ranged(0, ge=1, special=(0,))
    # number of layers; 0 = look the arch up in layers_by_arch (so presets keep sizes matched per arch)
    num_hidden_layers: int = ranged(0, ge=1, special=(0,))
    # layers per arch when num_hidden_layers is 0, e.g. {rodimus: 4, rodimus_plus: 2, llama: 2}
    layers_by_arch: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # "0 = derive it" was the spelling of these before they were the model config's own options (None)
        for name in LEGACY_ZERO:
            if getattr(self, name, None) == 0:
                setattr(self, name, None)

    def resolved_num_layers(self) -> int:
        if self.num_hidden_layers > 0:
            return self.num_hidden_layers
        if self.arch in self.layers_by_arch:
            return self.layers_by_arch[self.arch]
        raise ValueError(f"config field 'model.num_hidden_layers' is 0 and 'model.layers_by_arch' has no {self.arch!r}")

    def options(self) -> dict[str, Any]:
        """The options of the network's config (every field but the run-level ones and `extra`)."""
        return {o.name: getattr(self, o.name) for o in model_options()}

    def model_config(self, vocab_size: int | None = None):
        """The Hugging Face config this section describes (the one validation of every model option)."""
        vocab = vocab_size or self.vocab_size or 2
        return model_config(self.arch, vocab_size=vocab, num_hidden_layers=self.resolved_num_layers(),
                            options=self.options(), extra=self.extra)


LEGACY_ZERO = ("num_heads", "num_key_value_heads", "intermediate_size")

ModelConfig = make_dataclass(
    "ModelConfig",
    [(o.name, o.type, setting(o.default, doc=o.doc, **o.range, **({"special": (0,)} if o.name in LEGACY_ZERO else {})))
     for o in model_options()]
    # any further Hugging Face config fields, passed to the model config unchecked
    + [("extra", dict[str, Any], setting(default_factory=dict, doc="any further Hugging Face config fields, "
                                         "passed to the model config unchecked"))],
    bases=(ModelSection,), namespace={"__module__": __name__, "__doc__": ModelSection.__doc__},
)


@dataclass
class DataConfig:
    # where training sequences come from: the fetched corpus (slimkv fetch corpus) or random synthetic tokens;
    # data.files, when given, replaces the corpus with your own text
    source: Literal["corpus", "synthetic"] = "corpus"
    # your own text instead of the corpus: text files, JSONL, folders of them, or a saved Hugging Face dataset
    # (comma-separated or a YAML list: --data.files=notes.txt,more/ or --data.files=[a.jsonl,b.txt])
    files: list[str] | str = field(default_factory=list)
    # data.files only: the JSONL field / dataset column that holds the text
    text_field: str = "text"
    # data.files only: the share of the text (its end, by bytes) held out for evaluation
    heldout_fraction: float = 0.1
    # data directory (caches of the corpus, your files' splits, tokenizers, token shards); "" = $SLIMKV_DATA or ./data
    data_dir: str = ""
    # tokens per training sequence (the model sees seq_len tokens and predicts seq_len targets)
    seq_len: int = ranged(256, ge=1)
    # tokenizer vocabulary size (byte-level BPE trained on the training split)
    tokenizer_vocab_size: int = ranged(8192, ge=2)
    # a tokenizer.json or Hugging Face folder to use instead of training one ("" = train a BPE)
    tokenizer: str = ""
    # synthetic source only: number of tokens in the synthetic stream and its vocabulary
    synthetic_tokens: int = ranged(1_000_000, ge=2)
    synthetic_vocab_size: int = ranged(512, ge=2)
    # seed of the data order (kept separate from train.seed so model init and data order vary independently)
    seed: int = ranged(1234, ge=0)
    # share of training sequences that are passkey problems in slimkv eval niah's format over the training text
    # (data/passkey.py; rounded to twentieths), so small budgets learn the retrieval NIAH scores; 0 = plain text
    passkey: float = ranged(0.0, ge=0, lt=1)

    def __post_init__(self) -> None:
        if isinstance(self.files, str):
            self.files = [part.strip() for part in self.files.split(",") if part.strip()]
        if self.passkey and self.source == "synthetic":
            raise ValueError("config field 'data.passkey' needs text: data.source corpus (or data.files), not "
                             "synthetic")

    def resolved_data_dir(self) -> str:
        return str(data_root(self.data_dir))


@dataclass
class OptimConfig:
    # peak learning rate (reached after warmup)
    lr: float = ranged(1e-3, gt=0)
    # AdamW betas (the paper's 0.9 / 0.95)
    beta1: float = ranged(0.9, ge=0, lt=1)
    beta2: float = ranged(0.95, ge=0, lt=1)
    eps: float = ranged(1e-8, gt=0)
    # decoupled weight decay; biases, norm weights, Rodimus D and the untied embedding get none
    weight_decay: float = ranged(0.1, ge=0)
    # linear warmup steps, then cosine decay to min_lr_ratio * lr at train.steps
    warmup_steps: int = ranged(100, ge=0)
    min_lr_ratio: float = ranged(0.1, ge=0, le=1)
    # clip the global gradient norm to this; 0 = no clipping
    grad_clip: float = ranged(1.0, ge=0)


@dataclass
class TrainSection:
    # run name; outputs go to <out_dir>/<name>/
    name: str = "run"
    out_dir: str = "runs"
    # optimizer steps
    steps: int = ranged(1000, ge=1)
    # sequences per optimizer step, over all ranks and accumulation steps together
    batch_size: int = ranged(32, ge=1)
    # sequences per forward pass on one rank; accumulation = batch_size / (micro_batch_size * world size)
    micro_batch_size: int = ranged(8, ge=1)
    seed: int = ranged(0, ge=0)
    # "auto" = cuda if available else cpu
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # "auto" = bf16 autocast on CUDA, float32 on CPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # multi-process engine under torchrun: none, DistributedDataParallel, or FSDP2 (fully_shard)
    parallel: Literal["none", "ddp", "fsdp"] = "none"
    # recompute each block's activations in backward (less memory, ~30% more compute)
    activation_checkpointing: bool = False
    # torch.compile each block
    compile: bool = False
    # stop cleanly (eval, checkpoint, export) after this many seconds of wall time; 0 = no limit
    max_seconds: float = ranged(0.0, ge=0)
    # save a checkpoint every N steps (0 = only at the end); the last keep_checkpoints are kept (0 = all)
    checkpoint_every: int = ranged(200, ge=0)
    keep_checkpoints: int = ranged(2, ge=0)
    # export a Hugging Face folder (save_pretrained + tokenizer) to <run>/model at the end
    export_model: bool = True
    # testing aid: make the loss NaN at this step (-1 = off) to exercise the divergence guard
    debug_nan_at_step: int = ranged(-1, ge=0, special=(-1,))


@dataclass
class EvalConfig:
    # held-out perplexity every N steps (0 = only at the end); -1 = never
    every: int = ranged(200, ge=0, special=(-1,))
    # held-out batches (of train.batch_size sequences each) per evaluation; 0 = the whole split
    max_batches: int = ranged(16, ge=0)


@dataclass
class LogConfig:
    # log training metrics every N steps
    every: int = ranged(10, ge=1)
    # metrics.jsonl in the run directory
    jsonl: bool = True
    # TensorBoard event files in <run>/tb
    tensorboard: bool = True
    # tqdm progress bar (rank 0 only)
    progress: bool = True


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


def preset_names() -> list[str]:
    """The run configs shipped inside the package (src/slimkv/configs/*.yaml), by name."""
    return sorted(p.name[:-len(".yaml")] for p in resources.files("slimkv").joinpath("configs").iterdir()
                  if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    """The shipped preset `name` (tiny, 130m, 1.4b); works from an installed wheel, not only from a checkout."""
    if name not in preset_names():
        raise FileNotFoundError(f"no preset {name!r}; shipped presets: {', '.join(preset_names())}")
    return Path(str(resources.files("slimkv").joinpath("configs", f"{name}.yaml")))


def resolve_config_path(spec: str | os.PathLike) -> Path:
    """A YAML file if `spec` names one, else a shipped preset of that name (`slimkv train tiny`)."""
    path = Path(spec)
    if path.is_file():
        return path
    if str(spec) in preset_names():
        return preset_path(str(spec))
    raise FileNotFoundError(f"config file {str(spec)!r} does not exist; give a YAML file or a shipped preset "
                            f"({', '.join(preset_names())})")


def load_run_config(path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Load a run config (a YAML path or a preset name) plus `--section.field=value` overrides, then check
    cross-field rules."""
    config = load_config(resolve_config_path(path), overrides, schema=RunConfig)
    validate(config)
    return config


def run_config_from_dict(data: dict, overrides: typing.Sequence[str] = ()) -> RunConfig:
    config = config_from_dict(RunConfig, data, overrides)
    validate(config)
    return config


def check_seq_len(seq_len: int, limit: int | None) -> None:
    """Training sequences must fit the model's position limit (None: the model has none)."""
    if limit is not None and seq_len > limit:
        raise ValueError(f"config field 'data.seq_len' ({seq_len}) exceeds the model's position limit "
                         f"'model.max_position_embeddings' ({limit})")


def validate(config: RunConfig, check_model: bool = True) -> None:
    """Every field's range, then the model config built from the model section, then the rules that span
    sections; each failure names the field in one line. `check_model=False`: a run whose model is not the model
    section's (a trainer recipe: train/recipe.py) skips the model-section checks."""
    check_ranges(config)
    model, data, train = config.model, config.data, config.train
    limit = None
    if check_model:
        for arch, layers in model.layers_by_arch.items():
            if layers < 1:
                raise ValueError(f"config field 'model.layers_by_arch.{arch}' must be >= 1, got {layers}")
        limit = getattr(model.model_config(), "max_position_embeddings", None)
    # (a recipe may bring its own data section, e.g. recurformer/config.py MixtureConfig)
    if getattr(data, "source", None) == "synthetic" and data.synthetic_tokens < data.seq_len + 1:
        raise ValueError(f"config field 'data.synthetic_tokens' ({data.synthetic_tokens}) must be at least "
                         f"'data.seq_len' + 1 ({data.seq_len + 1})")
    check_seq_len(data.seq_len, limit)
    if train.batch_size % train.micro_batch_size:
        raise ValueError(f"config field 'train.batch_size' ({train.batch_size}) must be a multiple of "
                         f"'train.micro_batch_size' ({train.micro_batch_size})")
