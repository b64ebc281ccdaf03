"""Model configs and Hugging Face classes; importing this registers them with the Auto classes."""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import RodimusCache
from .configuration import RodimusConfig
from .modeling import RodimusForCausalLM, RodimusModel, RodimusPreTrainedModel
from .recurformer import RecurFormerConfig, RecurFormerForCausalLM  # registers itself with the Auto classes

AutoConfig.register(RodimusConfig.model_type, RodimusConfig, exist_ok=True)
AutoModel.register(RodimusConfig, RodimusModel, exist_ok=True)
AutoModelForCausalLM.register(RodimusConfig, RodimusForCausalLM, exist_ok=True)

__all__ = ["RecurFormerConfig", "RecurFormerForCausalLM", "RodimusCache", "RodimusConfig", "RodimusForCausalLM",
           "RodimusModel", "RodimusPreTrainedModel"]

# registration that waited for this package (slimkv/registration.py) can finish now
from ..registration import after_models  # noqa: E402

after_models()
