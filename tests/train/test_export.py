"""Exported model folders work with plain Hugging Face tooling, and a run's length can move mid-run."""
import json

import numpy as np
import pytest
import torch

from slimkv.train.config import OptimConfig
from slimkv.train.data_sources import DataSources
from slimkv.train.metrics import read_metrics
from slimkv.train.optim import build_scheduler, lr_factor
from slimkv.train.trainer import Trainer

from .helpers import tiny_config

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
        "of a wife. However little known the feelings or views of such a man may be on his first entering a "
        "neighbourhood, this truth is so well fixed in the minds of the surrounding families. ") * 12


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from slimkv.data.tokenizer import EOS_TOKEN, save_tokenizer

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT], trainer)
    folder = tmp_path_factory.mktemp("tok")
    save_tokenizer(tokenizer, folder)
    return folder


@pytest.mark.parametrize("arch", ["rodimus_plus", "llama"])
def test_export_works_with_auto_classes_and_pipeline(tmp_path, tokenizer_dir, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from slimkv.data import PackedDataset, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir / "tokenizer.json")
    ids = np.asarray(tokenizer.backend_tokenizer.encode(TEXT).ids, dtype=np.int64)
    vocab = tokenizer.backend_tokenizer.get_vocab_size()
    sources = DataSources(train=PackedDataset(ids, 32, seed=0, vocab_size=vocab),
                          heldout=PackedDataset(ids[:200], 32, shuffle=False, vocab_size=vocab),
                          vocab_size=vocab, tokenizer_file=tokenizer_dir / "tokenizer.json")
    cfg = tiny_config(tmp_path, "hf", arch, train={"steps": 2, "export_model": True})
    trainer = Trainer(cfg, sources=sources)
    trainer.fit()
    folder = tmp_path / "hf" / "model"
    config = json.loads((folder / "config.json").read_text())
    generation = json.loads((folder / "generation_config.json").read_text())
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for saved in (config, generation):
        assert saved["use_cache"] is True
        assert (saved["bos_token_id"], saved["eos_token_id"], saved["pad_token_id"]) == (eos, eos, eos)
    loaded_tokenizer = AutoTokenizer.from_pretrained(folder)
    assert loaded_tokenizer.pad_token == loaded_tokenizer.eos_token == "<|endoftext|>"
    assert loaded_tokenizer.model_max_length == 64 == config["max_position_embeddings"]
    # byte-level BPE: no WordPiece space clean-up (transformers warns on every decode otherwise)
    assert json.loads((folder / "tokenizer_config.json").read_text())["clean_up_tokenization_spaces"] is False
    assert loaded_tokenizer.decode(loaded_tokenizer("Yes , he said .").input_ids) == "Yes , he said ."
    # batched prompts of different lengths pad without any argument
    batch = loaded_tokenizer(["It is a truth", "a wife"], padding=True, return_tensors="pt")
    assert batch.input_ids.shape[0] == 2 and (batch.input_ids == eos).any()
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.use_cache and model.generation_config.eos_token_id == eos
    generator = pipeline("text-generation", model=str(folder))
    text = generator("It is a truth", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert text.startswith("It is a truth") and len(text) > len("It is a truth")
    # the training forwards never stepped a cache, although the model is built with use_cache=True
    assert trainer.model.config.use_cache is True


def test_set_total_steps_moves_the_end_and_the_cosine(tmp_path):
    lr, ratio = 3e-3, 0.1

    def shorten(trainer, step, loss):
        if step == 2:
            trainer.set_total_steps(5, warmup_steps=1)

    cfg = tiny_config(tmp_path, "moved", train={"steps": 50, "checkpoint_every": 0}, optim={"min_lr_ratio": ratio})
    trainer = Trainer(cfg, callbacks=(shorten,))
    result = trainer.fit()
    assert result.steps == 5 and result.checkpoint.name == "step-000005"
    logged = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "moved" / "metrics.jsonl") if "lr" in r}
    # steps 3..5 follow the new horizon at once; the lr ends at its minimum exactly where the run ends
    assert [logged[s] for s in (3, 4, 5)] == pytest.approx([lr * lr_factor(s - 1, 1, 5, ratio) for s in (3, 4, 5)])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lr * ratio)


def test_scheduler_state_does_not_carry_the_horizon():
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler = build_scheduler(optimizer, OptimConfig(lr=1.0, warmup_steps=2), total_steps=10)
    scheduler.set_total_steps(4)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    again = build_scheduler(torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1.0),
                            OptimConfig(lr=1.0, warmup_steps=2), total_steps=20)
    again.load_state_dict(state)
    # a resumed run keeps its position but takes the horizon from its own config
    assert again.last_epoch == 3 and again.total_steps == 20 and again.warmup_steps == 2
