"""Tiny random Llama / Qwen2 / Mistral models (2 layers, hidden 64) shared by the RecurFormer tests."""
import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

FAMILIES = ("llama", "qwen2", "mistral")


def tiny_source(family: str, num_kv_heads: int = 2, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=num_kv_heads, max_position_embeddings=512, tie_word_embeddings=False)
    common.update(overrides)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
        # HF initialises biases to zero; random biases make the bias-slicing of the conversion observable
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(sliding_window=6, **common))
    else:
        raise ValueError(family)
    return model.eval()


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param
