"""slimkv: language models whose inference memory does not grow with context.

`import slimkv` registers RodimusConfig / RodimusForCausalLM and the RecurFormer classes with transformers' Auto
classes as soon as transformers is imported (slimkv/registration.py), so importing the light parts
(`import slimkv.ops`, `slimkv.config`) never pulls in transformers. `slimkv.RodimusConfig` and the other names below
import their module on first use.
"""
from . import registration

__version__ = "0.1.0"
__all__ = ["RecurFormerConfig", "RecurFormerForCausalLM", "RodimusConfig", "RodimusForCausalLM", "RodimusModel",
           "__version__"]

# public name -> the module that defines it (imported on first access)
_LAZY = {name: "slimkv.models" for name in __all__ if name != "__version__"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slimkv' has no attribute {name!r}")


registration.install()
