"""The run config of `slimkv recurformer train`: the project trainer's sections plus a `recurformer` section.

    cfg = load_recurformer_config("configs/recurformer/smollm2.yaml", ["--recurformer.stage=B", "--train.steps=40"])

Same YAML + `--section.field=value` system as `slimkv train` (slimkv/config.py); `optim`, `train`, `eval` and `log`
are the trainer's own sections (slimkv/train/config.py), `data` is replaced by the training mixture below, and the
`model` section is not used (the model is `recurformer.student`). Each field's comment is its documentation.
"""
from __future__ import annotations

import os
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Literal

from ..config import check_ranges, load_config, ranged
from ..data.files import data_root
from ..train.config import ModelConfig, RunConfig

STAGES = ("gates", "A", "B")


@dataclass
class RecurFormerSection:
    # gates: learn which KV units can stream (DuoAttention-style gates on the original model; convert with
    # --select learned); A: new branches learn to reproduce the teacher's replaced heads, layer by layer;
    # B: next-token loss plus KL to the teacher's logits, every weight trainable
    stage: Literal["gates", "A", "B"] = "B"
    # the model to train: a converted folder (slimkv recurformer convert), or an original one for stage gates and
    # for control runs
    student: str = ""
    # the frozen original model (Stage A targets, the KL term); "" = the `source` in the student's conversion.json
    teacher: str = ""
    # Stage B of the unconverted model on the same data and steps: the control the variants are compared with
    control: bool = False
    # Stage B peak learning rates (the optim schedule scales both): new branch weights, and the pretrained weights
    # (0 = frozen); Stage A trains at optim.lr
    lr_branch: float = ranged(3e-4, ge=0)
    lr_base: float = ranged(1e-5, ge=0)
    # Stage B weight of KL(teacher || student) per token (0 = next-token loss only)
    kl_weight: float = ranged(1.0, ge=0)
    # tokens per chunk of Stage B's fused cross-entropy + KL (memory: about 4 x chunk x vocab floats)
    kl_chunk: int = ranged(1024, ge=1)
    # gates: weight of the L1 penalty that pushes gates towards streaming (DuoAttention: 0.05)
    gate_sparsity: float = ranged(0.05, ge=0)
    # gates: peak learning rate of the gate values (DuoAttention: 0.02). The distillation gradient is zero at
    # alpha = 1, where every gate starts, so at first only the penalty moves them, all alike: at optim.lr (1e-3)
    # ten CPU steps moved all 90 gates of SmolLM2 by the same 0.0055 and the "learned" ranking was noise
    lr_gates: float = ranged(2e-2, ge=0)
    # gates: the streaming attention each unit's gate mixes with full attention (previous tokens, sink tokens)
    gate_window: int = ranged(64, ge=1)
    gate_sinks: int = ranged(4, ge=0)


@dataclass
class MixtureConfig:
    # data directory (corpus, reference text, token shards); "" = $SLIMKV_DATA or ./data
    data_dir: str = ""
    # tokens per training sequence
    seq_len: int = ranged(512, ge=16)
    # shares of the training mixture: the project corpus (slimkv fetch corpus), dictionaries and technical docs
    # (slimkv/data/reference.py), whole windows inside long documents, and HashHop problems (recurformer/hashhop.py)
    corpus: float = ranged(0.5, ge=0)
    reference: float = ranged(0.3, ge=0)
    long_documents: float = ranged(0.2, ge=0)
    hashhop: float = ranged(0.0, ge=0)
    # long-document windows join the mixture only from this sequence length on (shorter ones fit most documents)
    long_from: int = ranged(2048, ge=1)
    # reference sources (slimkv/data/reference.py REFERENCE_SOURCES)
    reference_sources: list[str] = field(
        default_factory=lambda: ["gcide", "foldoc", "python-docs", "perl-docs", "linux-docs"])
    # seed of the data order
    seed: int = ranged(1234, ge=0)

    def resolved_data_dir(self) -> str:
        return str(data_root(self.data_dir))


@dataclass
class RecurFormerRunConfig(RunConfig):
    data: MixtureConfig = field(default_factory=MixtureConfig)
    recurformer: RecurFormerSection = field(default_factory=RecurFormerSection)


def preset_path(spec: str | os.PathLike) -> Path:
    """A YAML file, or the name of a shipped preset (src/slimkv/configs/recurformer/<name>.yaml)."""
    path = Path(spec)
    if path.is_file():
        return path
    folder = resources.files("slimkv").joinpath("configs", "recurformer")
    names = sorted(p.name[:-len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))
    if str(spec) in names:
        return Path(str(folder.joinpath(f"{spec}.yaml")))
    raise FileNotFoundError(f"config file {str(spec)!r} does not exist; give a YAML file or a shipped preset "
                            f"({', '.join(names)})")


def load_recurformer_config(path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> RecurFormerRunConfig:
    config = load_config(preset_path(path), overrides, schema=RecurFormerRunConfig)
    validate(config)
    return config


def validate(config: RecurFormerRunConfig) -> None:
    """Ranges, then the rules across fields; each failure names the field in one line."""
    check_ranges(config)
    rf, train, mix = config.recurformer, config.train, config.data
    if config.model != ModelConfig():
        default = ModelConfig()
        changed = [f.name for f in fields(ModelConfig) if getattr(config.model, f.name) != getattr(default, f.name)]
        raise ValueError(f"config field 'model.{changed[0]}' is not used by recurformer train: the model is "
                         "'recurformer.student'")
    if not rf.student:
        raise ValueError("config field 'recurformer.student' is required: a converted model folder (or the original "
                         "one for stage gates and control runs)")
    if rf.control and rf.stage != "B":
        raise ValueError(f"config field 'recurformer.control' is a Stage B run; 'recurformer.stage' is {rf.stage!r}")
    if train.batch_size % train.micro_batch_size:
        raise ValueError(f"config field 'train.batch_size' ({train.batch_size}) must be a multiple of "
                         f"'train.micro_batch_size' ({train.micro_batch_size})")
    shares = {"corpus": mix.corpus, "reference": mix.reference, "hashhop": mix.hashhop,
              "long_documents": mix.long_documents if mix.seq_len >= mix.long_from else 0.0}
    if not any(shares.values()):
        raise ValueError("config fields 'data.corpus', 'data.reference', 'data.long_documents' and 'data.hashhop' "
                         "are all 0: the training mixture is empty")
