"""Evaluation workflows: perplexity (token and byte level) over long texts in bounded memory, MQAR (mqar.py,
mqar_sweep.py), needle in a haystack (niah.py), lm-evaluation-harness tasks (lm_harness.py) and model class
(lm_model.py, imported only with lm-eval installed)."""
from .perplexity import PerplexityResult, encode_text, perplexity, token_nll

__all__ = ["PerplexityResult", "encode_text", "perplexity", "token_nll"]
