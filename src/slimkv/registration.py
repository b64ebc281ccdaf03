"""slimkv's model classes registered with transformers' Auto classes, lazily: when transformers is imported.

`import slimkv` calls `install()`: if transformers is already imported, the packages in `REGISTRANTS` are imported
at once (each registers its classes as it imports); otherwise a one-shot import hook waits for the first
`import transformers` and registers right after it. So

    import slimkv; from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained(folder)

works as before, while `import slimkv.ops` (kernels, benchmarks, a GPU image without transformers) imports neither
transformers nor any model code. A registrant whose import is already under way (transformers imported from inside
it) registers itself when it finishes; the others follow from its end (`after_models`).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys

logger = logging.getLogger(__name__)

# packages whose import registers model classes (models/__init__.py: Rodimus and, from models/recurformer/, RecurFormer)
REGISTRANTS = ("slimkv.models",)
_deferred = False


def _initializing(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def register(finished: str = "") -> None:
    """Import every registrant not yet imported; wait for one whose import is under way (see `after_models`).
    `finished`: a registrant at the very end of its own import (done, though Python still marks it as importing)."""
    global _deferred
    if any(_initializing(name) for name in REGISTRANTS if name != finished):
        _deferred = True
        return
    for name in REGISTRANTS:
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except Exception as err:  # noqa: BLE001 - a broken model package must not break `import transformers`
                logger.warning("slimkv could not register %s with transformers: %s", name, err)


def after_models() -> None:
    """Called at the end of slimkv.models' import: finish a registration that had to wait for it."""
    global _deferred
    if _deferred:
        _deferred = False
        register(finished="slimkv.models")


class _AfterTransformers(importlib.abc.MetaPathFinder):
    """Finds transformers with the other finders, and registers slimkv's classes once its import has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            register()

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if "transformers" in sys.modules:
        register()
    elif not any(isinstance(finder, _AfterTransformers) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterTransformers())
