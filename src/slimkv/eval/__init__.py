"""Evaluation workflows: perplexity (token and byte level) over long texts in bounded memory."""
from .perplexity import PerplexityResult, encode_text, perplexity, token_nll

__all__ = ["PerplexityResult", "encode_text", "perplexity", "token_nll"]
