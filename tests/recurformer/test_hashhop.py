"""HashHop generator and exact-match evaluator."""
import random

import pytest

from slimkv.recurformer.hashhop import evaluate, exact_match, make_example, make_examples


def _follow(prompt: str) -> str:
    lines, query = prompt.rsplit("\n", 1)
    links = dict(line.split(" = ") for line in lines.split("\n"))
    start, rest = query[len("Query: "):].split(" after ")
    node = start
    for _ in range(int(rest.split()[0])):
        node = links[node]
    return node


@pytest.mark.parametrize("chains,hops", [(1, 1), (4, 2), (6, 3)])
def test_answer_is_the_end_of_the_queried_chain(chains, hops):
    for ex in make_examples(20, seed=chains * 10 + hops, num_chains=chains, hops=hops, hash_len=4):
        assert _follow(ex.prompt) == ex.answer
        lines = ex.prompt.split("\n")[:-1]
        assert len(lines) == chains * hops
        # every hash appears once on each side at most: chains never merge
        assert len({l.split(" = ")[0] for l in lines}) == len(lines)
        assert ex.text.endswith(f" {ex.answer}\n")


def test_generator_is_seeded_and_rejects_bad_sizes():
    assert make_examples(3, seed=1) == make_examples(3, seed=1)
    assert make_examples(3, seed=1) != make_examples(3, seed=2)
    with pytest.raises(ValueError, match="hops >= 1"):
        make_example(random.Random(0), hops=0)


def test_exact_match_reads_the_first_line_only():
    assert exact_match(" ab12cd\nmore", "ab12cd")
    assert not exact_match(" ab12c", "ab12cd")
    assert not exact_match("ab12cdx", "ab12cd")


class EchoAnswerModel:
    """A fake 'model' whose greedy completion is the correct answer for even examples only."""

    def __init__(self, tokenizer, answers):
        self.tokenizer, self.answers, self.calls = tokenizer, answers, 0

    def eval(self):
        return self

    def generate(self, ids, **kwargs):
        import torch

        answer = self.answers[self.calls] if self.calls % 2 == 0 else "zzzzzz"
        self.calls += 1
        return torch.cat((ids, torch.tensor([[ord(c) for c in f" {answer}\n"]])), dim=1)


class OrdTokenizer:
    eos_token_id = 0

    def __call__(self, text, return_tensors=None):
        import torch

        return type("Out", (), {"input_ids": torch.tensor([[ord(c) for c in text]])})()

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(int(i)) for i in ids)


def test_evaluate_scores_exact_matches():
    examples = make_examples(4, seed=3)
    tok = OrdTokenizer()
    result = evaluate(EchoAnswerModel(tok, [e.answer for e in examples]), tok, examples)
    assert result["exact_match"] == 0.5 and result["n"] == 4
    assert [r["correct"] for r in result["examples"]] == [True, False, True, False]
