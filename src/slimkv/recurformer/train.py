"""Stage A (branch alignment), Stage B (continual training) and the control run for RecurFormer models.

Stage A: the original model is a frozen teacher; one teacher forward per batch records, for every converted layer,
its normed attention input and its per-head outputs before o_proj. Only the branches train, each to reproduce the
replaced heads' slots from that same input (relative MSE per layer: MSE / mean square of the target, so every layer
counts alike). Layers are independent here, so no student forward through the whole model is needed.

Stage B: next-token loss (plus optional KL to the teacher's logits) on the same text; branch parameters at
`lr_branch`, pretrained parameters at `lr_base` (0 freezes them). The control run gives the UNCONVERTED model the same
batches, steps and `lr_base` for all its weights. Batches are a pure function of (seed, step), so every run of a
comparison sees the same tokens. This is a deliberately small loop (one process, AdamW, constant LR after warmup),
not the project trainer: that one builds its models from its own configs and tokenizer.
"""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..io import atomic_write, atomic_write_text, check_output_folder
from .hashhop import make_example


class TokenBatches:
    """Random windows of `seq_len` tokens from one tokenized text (or HashHop rows); batch(step) is deterministic."""

    def __init__(self, tokenizer, text: str, seq_len: int, batch_size: int, seed: int = 0,
                 hashhop_frac: float = 0.0, max_chars: int = 4_000_000):
        self.ids = tokenizer(text[:max_chars], return_tensors="pt", add_special_tokens=False).input_ids[0]
        if self.ids.numel() <= seq_len:
            raise ValueError(f"training text has {self.ids.numel()} tokens; need more than seq_len = {seq_len}")
        self.tokenizer, self.seq_len, self.batch_size, self.seed = tokenizer, seq_len, batch_size, seed
        self.hashhop_frac = hashhop_frac

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids [B, T], labels [B, T]); labels are -100 on padding of HashHop rows."""
        rng = random.Random(self.seed * 1_000_003 + step)
        if self.hashhop_frac and rng.random() < self.hashhop_frac:
            return self._hashhop_batch(rng)
        starts = [rng.randrange(0, self.ids.numel() - self.seq_len) for _ in range(self.batch_size)]
        ids = torch.stack([self.ids[s:s + self.seq_len] for s in starts])
        return ids, ids.clone()

    def _hashhop_batch(self, rng: random.Random):
        pad = self.tokenizer.eos_token_id or 0
        rows, labels = [], []
        for _ in range(self.batch_size):
            ex = make_example(rng, num_chains=rng.randint(2, 6), hops=rng.randint(1, 3))
            ids = self.tokenizer(ex.text, add_special_tokens=False).input_ids[: self.seq_len]
            fill = self.seq_len - len(ids)
            rows.append(ids + [pad] * fill)
            labels.append(ids + [-100] * fill)
        return torch.tensor(rows), torch.tensor(labels)


def _branch_parameters(model) -> tuple[list, list]:
    """(new branch parameters, pretrained parameters). A `window` branch holds pretrained rows: it counts as base."""
    branch_ids = set()
    for layer in getattr(model.model, "layers", []):
        attn = layer.self_attn
        if getattr(attn, "branch", None) is not None and getattr(attn, "mixer", "") != "window":
            branch_ids |= {id(p) for p in attn.branch.parameters()}
    branch, base = [], []
    seen = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        (branch if id(p) in branch_ids else base).append(p)
    return branch, base


def _lr_lambda(steps: int):
    # linear warmup over a fifth of the run (at least 2 steps): a zero-initialised branch's first Adam step is
    # otherwise a full-size sign step on every weight
    warmup = max(2, steps // 5)
    return lambda step: min(1.0, (step + 1) / warmup)


def stage_a(student, teacher, batches: TokenBatches, steps: int, lr: float, progress: bool = True) -> list[float]:
    """Train only the recurrent branches to reproduce the teacher's replaced-head outputs (per-slot MSE)."""
    from tqdm import tqdm

    layers = [(i, layer.self_attn) for i, layer in enumerate(student.model.layers)
              if layer.self_attn.branch is not None and layer.self_attn.mixer != "window"]
    if not layers:
        return []
    branch, _ = _branch_parameters(student)
    for p in student.parameters():
        p.requires_grad_(False)
    for p in branch:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(branch, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(steps))
    captured: dict[int, dict[str, torch.Tensor]] = {i: {} for i, _ in layers}
    handles = []
    for i, _ in layers:
        attn = teacher.model.layers[i].self_attn

        def grab_input(module, args, kwargs, i=i):
            captured[i]["x"] = kwargs.get("hidden_states", args[0] if args else None)

        def grab_heads(module, args, i=i):
            captured[i]["heads"] = args[0]

        handles.append(attn.register_forward_pre_hook(grab_input, with_kwargs=True))
        handles.append(attn.o_proj.register_forward_pre_hook(grab_heads))
    losses = []
    teacher.eval()
    student.train()
    try:
        for step in tqdm(range(steps), desc="stage A", disable=not progress):
            ids, _ = batches.batch(step)
            with torch.no_grad():
                teacher(input_ids=ids, use_cache=False)
            total = 0.0
            for i, attn in layers:
                D = attn.geo.head_dim
                target = captured[i]["heads"].unflatten(-1, (-1, D))[:, :, attn.replaced_heads]
                y, _ = attn.branch(captured[i]["x"])
                y = y.unflatten(-1, (-1, D))
                total = total + F.mse_loss(y, target) / target.pow(2).mean().clamp_min(1e-8)
            loss = total / len(layers)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(branch, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
    finally:
        for h in handles:
            h.remove()
        for p in student.parameters():
            p.requires_grad_(True)
    student.eval()
    return losses


def stage_b(model, batches: TokenBatches, steps: int, lr_branch: float, lr_base: float, teacher=None,
            kl_weight: float = 0.0, progress: bool = True, desc: str = "stage B") -> list[float]:
    """Continual training with next-token loss (+ KL to `teacher`'s logits). Returns the LM loss per step."""
    from tqdm import tqdm

    branch, base = _branch_parameters(model)
    groups = []
    if branch:
        groups.append({"params": branch, "lr": lr_branch})
    if lr_base > 0:
        groups.append({"params": base, "lr": lr_base})
    for p in base:
        p.requires_grad_(lr_base > 0)
    if not groups:
        raise ValueError("nothing to train: no branch parameters and --lr-base 0")
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(steps))
    trainable = [p for g in groups for p in g["params"]]
    losses = []
    model.train()
    for step in tqdm(range(steps), desc=desc, disable=not progress):
        ids, labels = batches.batch(step)
        logits = model(input_ids=ids, use_cache=False).logits.float()
        lm = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        loss = lm
        if teacher is not None and kl_weight > 0:
            with torch.no_grad():
                t_logits = teacher(input_ids=ids, use_cache=False).logits.float()
            kl = F.kl_div(logits.log_softmax(-1), t_logits.log_softmax(-1), log_target=True, reduction="batchmean")
            loss = loss + kl_weight * kl / ids.shape[1]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(lm.item())
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return losses


def plot_losses(curves: dict[str, list[float]], path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.5), squeeze=False)
    for ax, (name, values) in zip(axes[0], curves.items()):
        ax.plot(values)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, dpi=100, format="png"))
    plt.close(fig)


def train_cli(args) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import modeling  # noqa: F401  (registers RecurFormer with the Auto classes)
    from .convert import save_converted
    from .text import load_text

    folder = Path(args.model)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no HF model folder at {folder} (config.json missing)")
    guard = dict(command="recurformer train", overwrite=getattr(args, "overwrite", False),
                 sources=tuple(p for p in (args.model, args.teacher) if p))
    check_output_folder(args.out, **guard)
    conversion_path = folder / "conversion.json"
    conversion = json.loads(conversion_path.read_text()) if conversion_path.is_file() else None
    if args.control and conversion is not None:
        raise ValueError(f"--control trains the unconverted model; {folder} is a RecurFormer conversion")
    if not args.control and conversion is None:
        raise ValueError(f"{folder} has no conversion.json: convert it first, or pass --control for the original")
    for name in ("steps_a", "steps_b", "seq_len", "batch_size"):
        if getattr(args, name) < 0 or (name in ("seq_len", "batch_size") and getattr(args, name) < 1):
            raise ValueError(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}")
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    teacher = None
    teacher_path = args.teacher or (conversion or {}).get("source")
    needs_teacher = not args.control and ("A" in args.stage or args.kl > 0)
    if needs_teacher:
        if not teacher_path or not Path(teacher_path, "config.json").is_file():
            raise FileNotFoundError(f"teacher model folder not found: {teacher_path} (pass --teacher)")
        teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    text, source = load_text(args.data, "train")
    batches = TokenBatches(tokenizer, text, args.seq_len, args.batch_size, args.seed, args.hashhop_frac)
    curves, started = {}, time.time()
    if not args.control and "A" in args.stage and args.steps_a:
        curves["stage A (relative MSE)"] = stage_a(model, teacher, batches, args.steps_a, args.lr_branch)
    if "B" in args.stage and args.steps_b:
        curves["stage B (LM loss)"] = stage_b(model, batches, args.steps_b, args.lr_branch_b, args.lr_base, teacher,
                                              args.kl, desc="control" if args.control else "stage B")
    record = {
        "model": str(folder), "control": args.control, "stage": args.stage, "data": source,
        "steps_a": args.steps_a, "steps_b": args.steps_b, "seq_len": args.seq_len, "batch_size": args.batch_size,
        "lr_branch": args.lr_branch, "lr_branch_b": args.lr_branch_b, "lr_base": args.lr_base, "kl": args.kl, "hashhop_frac": args.hashhop_frac,
        "seed": args.seed, "seconds": round(time.time() - started, 1), "curves": curves,
    }
    out = Path(args.out)
    save_converted(model, tokenizer, out, conversion, extra_json={"train.json": record}, **guard)
    if args.json:
        atomic_write_text(args.json, json.dumps(record, indent=1) + "\n")
    if args.png and curves:
        plot_losses(curves, args.png)
    summary = ", ".join(f"{k}: {v[0]:.3f} -> {sum(v[-5:]) / len(v[-5:]):.3f}" for k, v in curves.items() if v)
    print(f"trained {folder} -> {out} in {record['seconds']} s; {summary}")
    return 0
