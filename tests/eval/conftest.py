"""Shared fixtures of the evaluation tests: the real Brown corpus (fetched once per worker) and tiny models."""
import pytest

from slimkv.train.config import ModelConfig
from slimkv.train.factory import build_model

from tests.data.conftest import brown_data  # noqa: F401  (the real-text fixture the data tests already fetch)


def tiny_model(arch: str, vocab_size: int, max_positions: int = 512, seed: int = 1):
    cfg = ModelConfig(arch=arch, hidden_size=32, num_hidden_layers=2, num_heads=2, mem_size=8, window_size=16,
                      max_position_embeddings=max_positions)
    return build_model(cfg, vocab_size=vocab_size, seed=seed).eval()


@pytest.fixture(scope="session")
def brown_tokenizer(brown_data):
    return brown_data.load_tokenizer()


@pytest.fixture(scope="session")
def brown_documents(brown_data):
    from slimkv.data import read_split_documents

    return read_split_documents(brown_data.corpus, "heldout")
