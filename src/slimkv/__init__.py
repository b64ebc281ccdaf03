"""slimkv: language models whose inference memory does not grow with context.

`import slimkv` registers RodimusConfig / RodimusForCausalLM with transformers' Auto classes.
"""
from .models import RodimusConfig, RodimusForCausalLM, RodimusModel  # noqa: F401  (registers Auto classes)
from . import recurformer  # noqa: F401,E402  (registers RecurFormerConfig / RecurFormerForCausalLM)

__version__ = "0.1.0"
__all__ = ["RodimusConfig", "RodimusForCausalLM", "RodimusModel", "__version__"]
