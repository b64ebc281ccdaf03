"""Training on your own text (`--data.files`): formats, the held-out split, the cache, and every bad-input error."""
import json
import os
from pathlib import Path

import pytest

from slimkv.data import prepare_data
from slimkv.data.corpus import fetch_corpus
from slimkv.data.shards import load_shard
from slimkv.data.user_text import DOCUMENT_SEPARATOR, prepare_user_text, split_heldout


def real_text(min_chars: int = 40_000) -> str:
    """Real English prose that ships with Python: the docstrings of a few standard-library modules."""
    import argparse
    import collections
    import email
    import json as json_module
    import logging
    import pathlib
    import subprocess
    import unittest

    parts = []
    for module in (argparse, collections, email, json_module, logging, pathlib, subprocess, unittest):
        for name in sorted(dir(module)):
            doc = getattr(getattr(module, name), "__doc__", None)
            if isinstance(doc, str) and len(doc) > 200:
                parts.append(" ".join(doc.split()))
    text = "\n\n".join(dict.fromkeys(parts))
    assert len(text) >= min_chars
    return text


def read_split(info, split):
    return info.split_path(split).read_text("utf-8")[:-1].split(DOCUMENT_SEPARATOR)


def test_plain_text_file_is_split_at_its_end(tmp_path):
    text = "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(400))
    path = tmp_path / "notes.txt"
    path.write_text(text + "\r\n", encoding="utf-8")
    info = prepare_user_text([path], tmp_path / "data", heldout_fraction=0.1)
    (train,), (heldout,) = read_split(info, "train"), read_split(info, "heldout")
    # one document cut at a line break: train is the head, held-out the tail, nothing lost or duplicated
    assert train + "\n" + heldout == text
    assert heldout.startswith("line ") and train.endswith("dog")
    assert 0.08 < len(heldout) / len(text) < 0.12
    manifest = json.loads((info.folder / "manifest.json").read_text())
    assert manifest["inputs"][0]["path"] == str(path.resolve()) and manifest["splits"]["heldout"]["documents"] == 1


def test_split_heldout_takes_whole_documents_from_the_end():
    docs = ["a" * 50, "b" * 30, "c" * 10, "d" * 10]
    train, heldout = split_heldout(docs, 0.2)
    assert train == ["a" * 50, "b" * 30] and heldout == ["c" * 10, "d" * 10]
    half = "\n".join(["x"] * 250)
    assert split_heldout([half + "\n" + half], 0.5) == ([half], [half])
    # a scrap is not cut off: the whole straddling document goes to the nearer side
    assert split_heldout(["a" * 100, "b" * 100], 0.49) == (["a" * 100], ["b" * 100])
    assert split_heldout(["a" * 100, "b" * 100], 0.02) == (["a" * 100, "b" * 100], [])


def test_jsonl_json_and_folders(tmp_path):
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    rows = [{"body": f"document number {i} says hello", "id": i} for i in range(20)]
    (folder / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    (folder / "sub" / "b.json").write_text(json.dumps([{"body": "from a JSON list"}]), encoding="utf-8")
    (folder / "sub" / "c.txt").write_text("a plain file\n\n\n\n\nwith a long gap", encoding="utf-8")
    (folder / ".hidden.txt").write_text("never read", encoding="utf-8")
    info = prepare_user_text([folder], tmp_path / "data", text_field="body", heldout_fraction=0.2)
    train, heldout = read_split(info, "train"), read_split(info, "heldout")
    # sorted path order: a.jsonl, then sub/b.json, then sub/c.txt (gap collapsed so the separator stays unique);
    # the document straddling the held-out cut is split at a space
    expected = [r["body"] for r in rows] + ["from a JSON list", "a plain file\n\nwith a long gap"]
    assert " ".join(train + heldout).split(" ") == " ".join(expected).split(" ")
    assert train[:17] == expected[:17] and heldout[-3:] == expected[-3:]
    assert not any("never read" in d for d in train + heldout)
    with pytest.raises(ValueError, match=r"a.jsonl line 1: no string field 'text' \(fields: body, id\); "
                                         r"set --data.text_field"):
        prepare_user_text([folder], tmp_path / "data")


def test_saved_hugging_face_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [f"row {i} of a saved dataset with some words in it" for i in range(40)]
    datasets.Dataset.from_dict({"content": rows}).save_to_disk(str(tmp_path / "flat"))
    info = prepare_user_text([tmp_path / "flat"], tmp_path / "data", text_field="content", heldout_fraction=0.1)
    assert read_split(info, "train") + read_split(info, "heldout") == rows
    assert read_split(info, "heldout") == rows[-4:]
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": rows[:30]}),
                                   "validation": datasets.Dataset.from_dict({"content": rows[30:]})})
    splits.save_to_disk(str(tmp_path / "dict"))
    info = prepare_user_text([tmp_path / "dict"], tmp_path / "data", text_field="content")
    # the dataset's own validation split is the held-out text
    assert read_split(info, "train") == rows[:30] and read_split(info, "heldout") == rows[30:]
    assert info.manifest["heldout_rule"] == "the dataset's own validation/test split"
    with pytest.raises(ValueError, match="has no column 'text' \\(columns: content\\)"):
        prepare_user_text([tmp_path / "flat"], tmp_path / "data")


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"  \n\n\t\n", "is empty"),
    (b"GIF89a\x01\x00\x00\x00rest", "looks like a binary file \\(a NUL byte at offset 7\\)"),
    ("caf\u00e9 cr\u00e8me".encode("latin-1"), "is not valid UTF-8 \\(byte 3: "),
    (b'{"text": "ok"}\nnot json\n', "line 2 is not JSON"),
    (b'{"text": 3}\n', "line 1: no string field 'text'"),
])
def test_bad_input_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / ("bad.jsonl" if b"json" in content or b'{"' in content else "bad.txt")
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        prepare_user_text([path], tmp_path / "data")
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert path.read_bytes() == content


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file 'nope.txt' does not exist"):
        prepare_user_text(["nope.txt"], tmp_path / "data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        prepare_user_text([tmp_path / "empty"], tmp_path / "data")
    (tmp_path / "tiny.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="the train split of .*tiny.txt is empty; give more text"):
        prepare_user_text([tmp_path / "tiny.txt"], tmp_path / "data")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        prepare_user_text([tmp_path / "tiny.txt"], tmp_path / "data", heldout_fraction=1.0)


def test_cache_is_reused_and_follows_the_content(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(real_text(), encoding="utf-8")
    first = prepare_user_text([path], tmp_path / "data")
    stamp = first.split_path("train").stat().st_mtime_ns
    renamed = path.rename(tmp_path / "b.txt")
    again = prepare_user_text([renamed], tmp_path / "data")
    assert again.folder == first.folder and again.split_path("train").stat().st_mtime_ns == stamp
    renamed.write_text(renamed.read_text(encoding="utf-8") + "\nOne more line.", encoding="utf-8")
    assert prepare_user_text([renamed], tmp_path / "data").folder != first.folder
    # a damaged split file in the cache is rebuilt
    first.split_path("train").write_text("damaged", encoding="utf-8")
    assert prepare_user_text([tmp_path / "b.txt"], tmp_path / "data").split_path("train").read_text() != "damaged"


def test_prepare_data_tokenises_user_files(tmp_path):
    path = tmp_path / "book.txt"
    text = real_text()
    path.write_text(text, encoding="utf-8")
    data = prepare_data(tmp_path / "data", vocab_size=400, seq_len=32, files=[path], progress=False)
    assert data.tokenizer_path.parent.name.startswith("bpe-400-")
    assert data.shards["train"].parent.name.endswith(f"-files-{data.corpus.key[:12]}")
    tokens, meta = load_shard(data.shards["heldout"], verify=True)
    tokenizer = data.load_tokenizer()
    heldout_text = tokenizer.decode(tokens[:-1].tolist())
    assert heldout_text == data.corpus.split_path("heldout").read_text("utf-8")[:-1]
    assert heldout_text.strip() in text and meta["num_documents"] == 1
    assert data.unigram_perplexity() > 1.0
    # a pretrained tokenizer folder works the same way (here: the BPE just trained, saved as a HF folder)
    again = prepare_data(tmp_path / "data", seq_len=32, files=[path], tokenizer=data.tokenizer_path.parent,
                         progress=False)
    assert again.tokenizer_sha256 == data.tokenizer_sha256 and again.vocab_size == data.vocab_size


def test_hand_edited_corpus_split_is_never_overwritten(tmp_path, monkeypatch):
    corpus = tmp_path / "data" / "corpus"
    corpus.mkdir(parents=True)
    mine = "My own training text, which slimkv must not replace.\n"
    (corpus / "train.txt").write_text(mine, encoding="utf-8")
    monkeypatch.setattr("slimkv.data.corpus.download_archive", lambda *a: pytest.fail("must not download"))
    with pytest.raises(ValueError, match="was not written by `slimkv fetch corpus`.*--data.files=PATH") as err:
        fetch_corpus(tmp_path / "data", "brown", progress=False)
    assert "\n" not in str(err.value)
    assert (corpus / "train.txt").read_text(encoding="utf-8") == mine


@pytest.mark.network
def test_replacing_the_fetched_train_split_is_refused(brown_data, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(brown_data.data_dir / "corpus", copy / "corpus")
    train = copy / "corpus" / "train.txt"
    train.write_text("Replaced by a user.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train.txt was changed by hand \(it differs from corpus/manifest.json\)"):
        fetch_corpus(copy, "brown", progress=False)
    assert train.read_text(encoding="utf-8") == "Replaced by a user.\n"


def test_train_cli_on_a_user_file(tmp_path, capsys):
    from slimkv.cli.main import main as slimkv_main

    path = tmp_path / "mine.txt"
    path.write_text(real_text(), encoding="utf-8")
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = slimkv_main(["train", "tiny", f"--data.files={path}", "--data.tokenizer_vocab_size=400",
                            "--data.seq_len=32", "--model.hidden_size=64", "--model.window_size=32",
                            "--train.steps=3", "--train.batch_size=4", "--train.micro_batch_size=4",
                            "--train.name=mine", "--log.progress=false", "--log.tensorboard=false",
                            "--eval.max_batches=1"])
        assert code == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["steps"] == 3 and summary["heldout_loss"] is not None
        model_dir = Path("runs/mine/model")
        assert (model_dir / "tokenizer.json").is_file()
        assert next(Path("data/files").iterdir()).joinpath("manifest.json").is_file()
        (tmp_path / "blob.bin").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00")
        assert slimkv_main(["train", "tiny", "--data.files=blob.bin", "--train.name=bad"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["slimkv train: error: blob.bin looks like a binary file (a NUL byte at offset 7); give UTF-8 "
                       "text, JSONL, a folder of them, or a Hugging Face dataset saved with save_to_disk"]
    finally:
        os.chdir(here)
