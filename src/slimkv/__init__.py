"""slimkv: language models whose inference memory does not grow with context.

`import slimkv` registers RodimusConfig / RodimusForCausalLM and RecurFormerConfig / RecurFormerForCausalLM with
transformers' Auto classes.
"""
from .models import (RecurFormerConfig, RecurFormerForCausalLM, RodimusConfig,  # noqa: F401  (Auto classes)
                     RodimusForCausalLM, RodimusModel)

__version__ = "0.1.0"
__all__ = ["RecurFormerConfig", "RecurFormerForCausalLM", "RodimusConfig", "RodimusForCausalLM", "RodimusModel",
           "__version__"]
