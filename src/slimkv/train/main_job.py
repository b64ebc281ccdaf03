"""The Quick-start job (`make run` / `slimkv main`): real corpus -> tiny Rodimus+ -> held-out perplexity against a
unigram baseline -> a sample -> report.json, loss.png and memory.png under runs/<name>/."""
from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import torch

from ..io import atomic_write_text

PROMPT = "It was a truth that every reader knew:"


def find_preset(name: str) -> Path:
    """configs/<name>.yaml from the working directory, else from the source tree this package lives in."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        path = root / "configs" / f"{name}.yaml"
        if path.is_file():
            return path
    raise FileNotFoundError(f"preset configs/{name}.yaml not found (run from the slimkv source tree)")


def measure_cache_bytes(model, vocab_size: int, lengths: list[int]) -> list[int]:
    """Bytes held by the model's inference cache after a prefill of each length (counted, not estimated)."""
    from ..models.memory import cache_nbytes

    out = []
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n in lengths:
            ids = torch.randint(0, vocab_size, (1, n), generator=g)
            result = model(ids, use_cache=True, logits_to_keep=1)
            out.append(cache_nbytes(result.past_key_values))
    return out


def plot_loss(metrics: list[dict], unigram_ppl: float, heldout_ppl: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    held = [(m["step"], m["heldout_loss"]) for m in metrics if "heldout_loss" in m]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        ax.plot(*zip(*train), lw=1.2, label="train loss")
    if held:
        ax.plot(*zip(*held), "o-", ms=4, label="held-out loss (eval batches)")
    ax.axhline(math.log(unigram_ppl), color="gray", ls="--", label=f"unigram baseline (ppl {unigram_ppl:.0f})")
    ax.axhline(math.log(heldout_ppl), color="green", ls=":", label=f"final held-out, full split (ppl {heldout_ppl:.1f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_memory(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key, label, color in (("model_bytes", "trained Rodimus+ (cache)", "C0"),
                              ("transformer_bytes", "same-size Transformer (KV cache)", "C3")):
        measured = [(r["tokens"], r[key]) for r in rows if r["measured"]]
        extrapolated = [(r["tokens"], r[key]) for r in rows if not r["measured"] or r is rows[-1]]
        ax.plot(*zip(*measured), "o-", color=color, label=f"{label}, measured")
        last_measured = measured[-1]
        ext = [last_measured] + [p for p in extrapolated if p[0] > last_measured[0]]
        if len(ext) > 1:
            ax.plot(*zip(*ext), "--", color=color, alpha=0.7, label=f"{label}, extrapolated")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("inference-state bytes (batch 1, float32)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_main_job(name: str = "main", minutes: float = 8.0, data_dir: str | None = None,
                 overrides: tuple[str, ...] = (), progress: bool = True) -> dict:
    from ..data.corpus import heldout_description
    from ..data.prepare import prepare_data
    from ..eval.perplexity import perplexity
    from ..models.memory import transformer_kv_bytes
    from .config import load_run_config
    from .factory import build_model, count_parameters
    from .metrics import read_metrics
    from .trainer import train

    start = time.perf_counter()
    # the cosine schedule should finish inside the time budget: about 2 optimizer steps of 4096 tokens per
    # 5 seconds on an idle 2-core CPU (measured ~1.6k tokens/s)
    steps = max(20, int(minutes * 60 * 1600 / 4096 * 0.95))
    config = load_run_config(find_preset("tiny"), [f"--train.name={name}", f"--train.max_seconds={minutes * 60}",
                                                   f"--train.steps={steps}", f"--optim.warmup_steps={steps // 10}",
                                                   f"--eval.every={max(10, steps // 4)}",
                                                   f"--train.checkpoint_every={max(10, steps // 4)}",
                                                   *([f"--data.data_dir={data_dir}"] if data_dir else []),
                                                   *overrides])
    cfg = config.data
    data = prepare_data(cfg.resolved_data_dir(), vocab_size=cfg.tokenizer_vocab_size, seq_len=cfg.seq_len,
                        progress=progress)
    result = train(config)
    run_dir = Path(result.run_dir)
    model_dir = run_dir / "model"

    from transformers import AutoModelForCausalLM

    import slimkv  # noqa: F401  (registers the Auto classes)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = data.load_tokenizer()
    heldout = torch.cat([torch.tensor([data.eos_id]), torch.from_numpy(data.tokens("heldout").astype("int64"))])
    ppl = perplexity(model, heldout, data.num_bytes("heldout"), seq_len=cfg.seq_len, progress=progress)
    unigram = data.unigram_perplexity()

    torch.manual_seed(0)
    prompt_ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=60,
                             do_sample=True, temperature=0.8, top_k=50, pad_token_id=data.eos_id)
    sample = tokenizer.decode(out[0, prompt_ids.shape[1]:], skip_special_tokens=True)

    # inference memory: counted after real prefills up to the position limit, then extended by the exact formula
    limit = model.config.max_position_embeddings
    measured_lengths = [n for n in (64, 256, 1024, 2048) if n <= limit]
    llama_cfg = load_run_config(find_preset("tiny"), ["--model.arch=llama"]).model
    llama = build_model(llama_cfg, data.vocab_size, seed=0).eval()
    ours = measure_cache_bytes(model, data.vocab_size, measured_lengths)
    theirs = measure_cache_bytes(llama, data.vocab_size, measured_lengths)
    lc = llama.config
    rows = [{"tokens": n, "model_bytes": a, "transformer_bytes": b, "measured": True}
            for n, a, b in zip(measured_lengths, ours, theirs)]
    for n in (8192, 32768, 131072):
        kv = transformer_kv_bytes(lc.num_hidden_layers, lc.num_key_value_heads,
                                  lc.hidden_size // lc.num_attention_heads, n, bytes_per_element=4)
        rows.append({"tokens": n, "model_bytes": ours[-1], "transformer_bytes": kv, "measured": False})

    metrics = read_metrics(run_dir / "metrics.jsonl")
    params = count_parameters(model)
    report = {
        "heldout_ppl": ppl.token_ppl,
        "heldout_bits_per_byte": ppl.bits_per_byte,
        "heldout_tokens": ppl.tokens,
        "unigram_ppl": unigram,
        "tokens_seen": result.tokens_seen,
        "steps": result.steps,
        "params": params,
        "transformer_baseline_params": count_parameters(llama),
        "train_tokens_per_s": result.tokens_per_s,
        "final_train_loss": result.losses[-1] if result.losses else None,
        "prompt": PROMPT,
        "sample": sample,
        "memory": rows,
        "model": model.config.to_dict(),
        "heldout_split": heldout_description(),
        "wall_seconds": time.perf_counter() - start,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor(),
                    "threads": torch.get_num_threads()},
    }
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
    plot_loss(metrics, unigram, ppl.token_ppl, run_dir / "loss.png",
              f"tiny Rodimus+ ({params['total'] / 1e6:.1f}M params, {result.tokens_seen / 1e6:.1f}M tokens)")
    plot_memory(rows, run_dir / "memory.png", "Inference memory: trained Rodimus+ vs same-size Transformer")
    return report
