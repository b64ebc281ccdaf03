"""Make a saved slimkv model folder loadable by code that has never imported slimkv.

`add_remote_code(folder)` writes `auto_map` into the folder's config.json and a two-line module beside the
weights that imports the INSTALLED slimkv classes (no model code is copied). Then plain transformers loads it:

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    lm_eval --model hf --model_args pretrained=folder,trust_remote_code=True ...

Model types it knows: slimkv_rodimus (Rodimus, Rodimus+) and recurformer. Call it right after `save_pretrained`; `python -m slimkv.hub DIR...` prepares existing folders.
"""
from __future__ import annotations

import json
from pathlib import Path

from .io import atomic_write_text

SHIM_MODULE = "slimkv_auto"

# model_type -> (config class, causal LM class), each importable from the installed slimkv
CLASSES: dict[str, tuple[str, str]] = {
    "slimkv_rodimus": ("slimkv.models.RodimusConfig", "slimkv.models.RodimusForCausalLM"),
    "recurformer": ("slimkv.models.recurformer.RecurFormerConfig",
                    "slimkv.models.recurformer.RecurFormerForCausalLM"),
}

_SHIM = '''"""Loads this model folder with the installed slimkv package (`pip install slimkv`): no model code lives here.

Written by slimkv.hub.add_remote_code; transformers imports it when trust_remote_code=True.
"""
from {config_module} import {config_name}  # noqa: F401
from {model_module} import {model_name}  # noqa: F401
'''


def add_remote_code(folder: str | Path) -> Path:
    """Add `auto_map` + the shim module to a saved folder (idempotent); returns the shim's path."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a saved model folder (no config.json)")
    config = json.loads(config_path.read_text("utf-8"))
    model_type = config.get("model_type")
    if model_type not in CLASSES:
        raise ValueError(f"model_type {model_type!r} in {str(config_path)!r} is not a slimkv model "
                         f"({', '.join(CLASSES)})")
    config_class, model_class = CLASSES[model_type]
    config_module, config_name = config_class.rsplit(".", 1)
    model_module, model_name = model_class.rsplit(".", 1)
    shim = folder / f"{SHIM_MODULE}.py"
    atomic_write_text(shim, _SHIM.format(config_module=config_module, config_name=config_name,
                                         model_module=model_module, model_name=model_name))
    config["auto_map"] = {"AutoConfig": f"{SHIM_MODULE}.{config_name}",
                          "AutoModelForCausalLM": f"{SHIM_MODULE}.{model_name}"}
    atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return shim


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print("usage: python -m slimkv.hub MODEL_DIR...  (adds auto_map + slimkv_auto.py for trust_remote_code)")
        sys.exit(0 if len(sys.argv) > 1 else 2)
    for target in sys.argv[1:]:
        try:
            print(f"{target}: wrote {add_remote_code(target)}")
        except (FileNotFoundError, ValueError) as err:
            print(f"slimkv.hub: error: {err}", file=sys.stderr)
            sys.exit(2)
