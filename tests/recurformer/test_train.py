"""Stage A / Stage B / control on tiny models: the right parameters move, the losses fall, batches repeat."""
import pytest
import torch

from slimkv.recurformer.convert import build_converted
from slimkv.recurformer.train import TokenBatches, _branch_parameters, stage_a, stage_b

from .conftest import tiny_source


class RandomBatches:
    """Fixed random token batches: batch(step) depends only on the step."""

    def batch(self, step):
        ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(step % 3))
        return ids, ids.clone()


def test_stage_a_trains_only_branches_and_aligns_them():
    teacher = tiny_source("qwen2")
    student = build_converted(teacher, [[1], [0]], "mamba2", init="zero")
    frozen = {n: p.clone() for n, p in student.named_parameters() if ".branch." not in n}
    losses = stage_a(student, teacher, RandomBatches(), steps=12, lr=1e-2, progress=False)
    # zero output at step 0: relative MSE exactly 1; it must fall well below
    assert losses[0] == pytest.approx(1.0, abs=1e-6)
    assert sum(losses[-3:]) / 3 < 0.8
    for name, p in student.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name


def test_stage_b_lr_groups_and_control():
    teacher = tiny_source("llama")
    student = build_converted(teacher, [[1], [0]], "ddts", init="zero")
    branch, base = _branch_parameters(student)
    assert branch and base and not ({id(p) for p in branch} & {id(p) for p in base})
    before = {n: p.clone() for n, p in student.named_parameters()}
    losses = stage_b(student, RandomBatches(), steps=12, lr_branch=3e-3, lr_base=0.0, progress=False)
    assert losses[-1] < losses[0]
    moved = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(".branch." in n for n in moved)
    # control: the unconverted model has no branch; every weight trains at lr_base
    control = tiny_source("llama")
    before = {n: p.clone() for n, p in control.named_parameters()}
    stage_b(control, RandomBatches(), steps=3, lr_branch=1.0, lr_base=1e-3, progress=False)
    assert all(not torch.equal(p, before[n]) for n, p in control.named_parameters())
    with pytest.raises(ValueError, match="nothing to train"):
        stage_b(tiny_source("llama"), RandomBatches(), steps=1, lr_branch=1e-3, lr_base=0.0, progress=False)


def test_window_branch_weights_count_as_pretrained():
    student = build_converted(tiny_source("llama"), [[1], [0]], "window")
    branch, _ = _branch_parameters(student)
    assert branch == []


class CharTokenizer:
    eos_token_id = 0

    def __call__(self, text, return_tensors=None, add_special_tokens=False):
        ids = [1 + (ord(c) % 90) for c in text]
        if return_tensors == "pt":
            class Out:
                input_ids = torch.tensor([ids])
            return Out()
        return type("Out", (), {"input_ids": ids})()


def test_token_batches_are_a_function_of_the_step_and_mix_hashhop():
    text = "the quick brown fox jumps over the lazy dog. " * 40
    a = TokenBatches(CharTokenizer(), text, 32, 3, seed=7)
    b = TokenBatches(CharTokenizer(), text, 32, 3, seed=7)
    assert torch.equal(a.batch(5)[0], b.batch(5)[0])
    assert not torch.equal(a.batch(5)[0], a.batch(6)[0])
    mixed = TokenBatches(CharTokenizer(), text, 200, 2, seed=1, hashhop_frac=1.0)
    ids, labels = mixed.batch(0)
    assert ids.shape == (2, 200) and (labels == -100).any()
    with pytest.raises(ValueError, match="need more than seq_len"):
        TokenBatches(CharTokenizer(), "short", 32, 2)
