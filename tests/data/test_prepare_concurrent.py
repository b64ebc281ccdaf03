"""Processes that prepare the same data at the same time tokenise it once (slimkv.data.prepare._preparing)."""
import json
import subprocess
import sys

from slimkv.data import prepare_data
from slimkv.data.shards import load_shard

from .test_user_text import real_text

# a child process: count every shard it encodes (one line each, with its PID), hold the encode long enough that
# the other child arrives meanwhile, then print what prepare_data returned
CHILD = r"""
import json, os, sys, time
import slimkv.data.prepare as prepare
counter, data_dir, text, tokenizer = sys.argv[1:5]
encode = prepare.encode_split_file
def counted(text_path, tokenizer, bin_path, **kw):
    with open(counter, "a") as out:
        out.write(f"{os.getpid()} {bin_path.name}\n")
    time.sleep(1.5)
    return encode(text_path, tokenizer, bin_path, **kw)
prepare.encode_split_file = counted
print("ready", flush=True)
sys.stdin.readline()
data = prepare.prepare_data(data_dir, seq_len=32, files=[text], tokenizer=tokenizer, progress=False)
print(json.dumps({split: data.shard_meta[split]["bin_sha256"] for split in data.shards}), flush=True)
"""


def test_two_processes_tokenise_one_shard_once(tmp_path):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    text = real_text()
    first.write_text(text, encoding="utf-8")
    second.write_text(text[len(text) // 2:], encoding="utf-8")
    data_dir = tmp_path / "data"
    # a BPE trained on the first file; the children tokenise the second, whose shards do not exist yet
    tokenizer = prepare_data(data_dir, vocab_size=400, seq_len=32, files=[first], progress=False).tokenizer_path
    counter = tmp_path / "encodes.txt"
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(counter), str(data_dir), str(second),
                                  str(tokenizer.parent)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for _ in range(2)]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    for child in children:  # both start preparing at the same moment
        child.stdin.write("go\n")
        child.stdin.flush()
    results = [json.loads(child.communicate(timeout=120)[0].splitlines()[-1]) for child in children]
    assert all(child.returncode == 0 for child in children)
    encodes = counter.read_text().splitlines()
    # each split encoded exactly once, by whichever child got there first
    assert sorted(line.split()[1] for line in encodes) == ["heldout.bin", "train.bin"]
    assert results[0] == results[1]
    again = prepare_data(data_dir, seq_len=32, files=[second], tokenizer=tokenizer.parent, progress=False)
    tokens, meta = load_shard(again.shards["train"], verify=True)
    assert meta["bin_sha256"] == results[0]["train"] and len(tokens) > 32
