"""HashHop: multi-hop lookup over shuffled `a = b` lines of random hash strings, scored by exact match.

Written from the public description of Magic's task (no code reused). One example:

    prompt:  the shuffled assignment lines of `num_chains` chains (each `hops` links long), then
             "Query: <start> after <hops> hops ->"  (the model completes the line)
    answer:  " <end>" where <end> is the hash reached by following `hops` links from <start>

Distractor chains have the same length, so the answer cannot be found by counting; only following the links works.
Exact match: the greedy completion up to the first newline, stripped, equals the answer hash.
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass

ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class HashHopExample:
    prompt: str
    answer: str
    hops: int
    num_chains: int

    @property
    def text(self) -> str:
        """Prompt + answer + newline: a training sequence."""
        return f"{self.prompt} {self.answer}\n"


def make_example(rng: random.Random, num_chains: int = 4, hops: int = 2, hash_len: int = 6) -> HashHopExample:
    if num_chains < 1 or hops < 1 or hash_len < 2:
        raise ValueError(f"hashhop needs num_chains >= 1, hops >= 1, hash_len >= 2; got {num_chains}, {hops}, {hash_len}")
    needed = num_chains * (hops + 1)
    hashes: set[str] = set()
    while len(hashes) < needed:
        hashes.add("".join(rng.choice(ALPHABET) for _ in range(hash_len)))
    pool = sorted(hashes)
    rng.shuffle(pool)
    chains = [pool[i * (hops + 1):(i + 1) * (hops + 1)] for i in range(num_chains)]
    lines = [f"{chain[j]} = {chain[j + 1]}" for chain in chains for j in range(hops)]
    rng.shuffle(lines)
    target = rng.randrange(num_chains)
    prompt = "\n".join(lines) + f"\nQuery: {chains[target][0]} after {hops} hops ->"
    return HashHopExample(prompt, chains[target][-1], hops, num_chains)


def make_examples(n: int, seed: int = 0, **kwargs) -> list[HashHopExample]:
    rng = random.Random(seed)
    return [make_example(rng, **kwargs) for _ in range(n)]


def exact_match(completion: str, answer: str) -> bool:
    return completion.split("\n", 1)[0].strip() == answer


def evaluate(model, tokenizer, examples: list[HashHopExample], max_new_tokens: int = 12) -> dict:
    """Greedy completion of each prompt (through the model's own cache); exact-match accuracy."""
    import torch

    correct, rows = 0, []
    model.eval()
    for ex in examples:
        ids = tokenizer(ex.prompt, return_tensors="pt").input_ids.to(getattr(model, "device", "cpu"))
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.eos_token_id)
        completion = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        ok = exact_match(completion, ex.answer)
        correct += ok
        rows.append({"answer": ex.answer, "completion": completion.split("\n", 1)[0].strip(), "correct": ok})
    return {"exact_match": correct / max(len(examples), 1), "n": len(examples), "examples": rows}
