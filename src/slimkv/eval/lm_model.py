"""`lm_eval --model slimkv`: lm-eval's HFLM for slimkv model folders (needs `pip install slimkv[eval]`).

- `SlimkvLM` imports slimkv, which registers Rodimus / Rodimus+ / RecurFormer with transformers' Auto classes, so
  the folder loads without trust_remote_code; a `slimkv train` run directory stands for its exported model/ folder.
  Everything else (batching, devices, dtype, rolling windows) is HFLM's.
- Importing this module registers the name `slimkv` (`@register_model`); pyproject.toml also declares it as an
  `lm_eval.models` entry point, which lm-eval releases with plugin discovery load by themselves.
- lm-eval 0.4.13 (the newest on PyPI) reads no entry points: there, `python -m slimkv.eval.lm_model ARGS` is
  `lm_eval ARGS` with `slimkv` registered, and the Python API works after `import slimkv.eval.lm_model`.
- Without slimkv imported at all, `--model hf --model_args pretrained=DIR,trust_remote_code=True` loads any folder
  that slimkv.hub.add_remote_code prepared (auto_map + a shim that imports the installed slimkv).
"""
from __future__ import annotations

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from .lm_harness import resolve_model_folder


@register_model("slimkv")
class SlimkvLM(HFLM):
    def __init__(self, pretrained: str, **kwargs):
        import slimkv  # noqa: F401  (registers the slimkv classes with transformers' Auto factories)

        super().__init__(pretrained=str(resolve_model_folder(pretrained)), **kwargs)


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
