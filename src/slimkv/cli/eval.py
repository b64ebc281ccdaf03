"""`slimkv eval`: perplexity of a model, or one of the papers' evaluations.

    slimkv eval MODEL --ppl FILE_OR_SPLIT [--seq-len N] [--stride S] [--json PATH]    perplexity
    slimkv eval mqar [--archs ...] [--state-sizes ...] [--out DIR]                    MQAR sweep (JSON + PNG)
    slimkv eval niah MODEL [--lengths ...] [--depths ...] [--out DIR]                 needle in a haystack
    slimkv eval lm-tasks [--out DIR]                                                  lm-eval task folder

MODEL: a Hugging Face folder (slimkv Rodimus/Rodimus+, RecurFormer or any causal LM) or a `slimkv train` run
directory. `slimkv eval TASK --help` lists each task's options.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

SPLIT_NAMES = ("heldout", "train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument("target", metavar="MODEL_OR_TASK",
                        help="a model folder or run directory (perplexity), or a task: mqar, niah, lm-tasks")
    parser.add_argument("rest", nargs=argparse.REMAINDER, metavar="...",
                        help="the options of perplexity or of the task (see `slimkv eval TASK --help`)")


def run(args: argparse.Namespace) -> int:
    if args.target in TASKS:
        description, add, run_task = TASKS[args.target]
        parser = argparse.ArgumentParser(prog=f"slimkv eval {args.target}", description=description)
        add(parser)
        return run_task(parser.parse_args(args.rest))
    parser = argparse.ArgumentParser(prog="slimkv eval", description="perplexity of a model on a text file or a "
                                     "corpus split; recurrent models carry their state across windows")
    _add_ppl_arguments(parser)
    return _run_ppl(parser.parse_args([args.target, *args.rest]))


def _add_ppl_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Hugging Face model folder or training run directory")
    parser.add_argument("--ppl", required=True, metavar="FILE_OR_SPLIT",
                        help="text file, or corpus split name: " + ", ".join(SPLIT_NAMES))
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per forward window (default 512)")
    parser.add_argument("--stride", type=int, default=None,
                        help="sliding-window step for attention models (default seq_len / 2)")
    parser.add_argument("--mode", choices=("recurrent", "sliding"), default=None,
                        help="override: carry the cache across windows, or slide a window (default by model type)")
    parser.add_argument("--max-tokens", type=int, default=0, help="score only the first N tokens (0 = all; the byte count is scaled in proportion)")
    parser.add_argument("--data-dir", default=None, help="corpus data directory (default $SLIMKV_DATA or ./data)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the numbers as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _read_text_file(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{str(path)!r} is not UTF-8 text (invalid byte at offset {err.start})") from None
    if not text.strip():
        raise ValueError(f"{str(path)!r} is empty")
    return text


def _ids_and_bytes(target: str, tokenizer, data_dir: str | None, progress: bool) -> tuple[torch.Tensor, int, str]:
    from ..data import document_separator_id

    try:
        separator = document_separator_id(tokenizer)
    except ValueError:
        separator = None
    path = Path(target)
    if path.is_file():
        from ..eval.perplexity import encode_text

        text = _read_text_file(path)
        return encode_text(tokenizer, text, separator), len(text.encode("utf-8")), str(path)
    if target in SPLIT_NAMES:
        from ..data import encode_documents, fetch_corpus, read_split_documents

        info = fetch_corpus(data_dir, progress=progress)
        documents = read_split_documents(info, target)
        if not documents:
            raise ValueError(f"corpus split {target!r} is empty")
        ids = encode_documents(documents, tokenizer, progress=progress, desc=f"tokenise {target}")
        prefix = [separator] if separator is not None else []
        ids = torch.cat([torch.tensor(prefix, dtype=torch.long), torch.from_numpy(ids)])
        return ids, sum(len(doc.encode("utf-8")) for doc in documents), f"corpus split {target}"
    raise FileNotFoundError(f"--ppl {target!r} is neither a file nor a corpus split ({', '.join(SPLIT_NAMES)})")


def _run_ppl(args: argparse.Namespace) -> int:
    from ..eval.loading import load_model_and_tokenizer
    from ..eval.perplexity import _check_lengths, default_mode, perplexity

    model, tokenizer = load_model_and_tokenizer(args.model)
    if tokenizer is None:
        raise ValueError(f"{args.model!r} has no tokenizer (tokenizer.json); save one beside the model")
    mode = args.mode or default_mode(model)
    stride = args.stride or (max(1, args.seq_len // 2) if mode == "sliding" else args.seq_len)
    # fail on bad lengths before tokenising a whole corpus
    _check_lengths(model, args.seq_len, stride)
    if args.device != "cpu":
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but no CUDA device is available")
        model = model.to(args.device)
    ids, num_bytes, what = _ids_and_bytes(args.ppl, tokenizer, args.data_dir, not args.quiet)
    if args.max_tokens and len(ids) > args.max_tokens:
        # keep the byte count consistent: scale it by the share of tokens kept
        num_bytes = max(1, round(num_bytes * args.max_tokens / len(ids)))
        ids = ids[:args.max_tokens]
    result = perplexity(model, ids, num_bytes, seq_len=args.seq_len, stride=stride, mode=mode,
                        progress=not args.quiet)
    record = {"model": str(args.model), "text": what, **result.as_dict()}
    print(f"{what}: {result.tokens} tokens, {result.bytes} bytes; token ppl {result.token_ppl:.3f}, "
          f"bits/byte {result.bits_per_byte:.4f}, byte ppl {result.byte_ppl:.4f} ({result.mode}, seq_len "
          f"{result.seq_len}" + (f", stride {result.stride})" if result.mode == "sliding" else ")"))
    if args.json:
        from ..train.checkpoint import write_text_atomic

        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------------------- mqar
def _csv(kind):
    return lambda text: tuple(kind(item) for item in text.split(",") if item.strip())


def _add_mqar_arguments(parser: argparse.ArgumentParser) -> None:
    from ..eval.mqar_sweep import MQARSweepConfig

    d = MQARSweepConfig()
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--archs", type=_csv(str), default=",".join(map(str, d.archs)), help="model kinds (comma separated)")
    parser.add_argument("--state-sizes", type=_csv(int), default=",".join(map(str, d.state_sizes)),
                        help="state sizes n: Rodimus mem_size, Mamba2 state, GLA key dim (not used by llama)")
    parser.add_argument("--d-models", type=_csv(int), default=",".join(map(str, d.d_models)), help="model widths")
    parser.add_argument("--lrs", type=_csv(float), default=",".join(map(str, d.lrs)), help="learning rates; the best one is reported")
    parser.add_argument("--layers", type=int, default=d.num_layers, help="layers per model")
    parser.add_argument("--train", default="zoology", metavar="SEGMENTS",
                        help="train segments SEQxPAIRS[:EXAMPLES],...; 'zoology' = 64x4:100000,128x8:20000,"
                             "256x16:20000,256x32:20000,256x64:20000")
    parser.add_argument("--test", default="zoology", metavar="SEGMENTS",
                        help="test segments; 'zoology' = 64x4,64x8,64x16,128x32,256x64,512x128,1024x256 "
                             "(1000 examples each)")
    parser.add_argument("--target", default="", help="test segment that picks the best lr and is plotted "
                        "(default: the longest)")
    parser.add_argument("--vocab-size", type=int, default=d.vocab_size)
    parser.add_argument("--steps", type=int, default=d.steps, help="optimizer steps per run")
    parser.add_argument("--epochs", type=float, default=0.0,
                        help="if > 0: steps = this many passes over the train set (Zoology: 32)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--micro-batch-size", type=int, default=0, help="sequences per forward (0 = batch size)")
    parser.add_argument("--warmup-steps", type=int, default=-1, help="-1 = min(100, steps / 10)")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--window-size", type=int, default=d.window_size,
                        help="Rodimus+ attention window W (each query sees W/2 previous tokens)")
    parser.add_argument("--state-field", action="append", default=[], metavar="ARCH=FIELD",
                        help="the config field that sets ARCH's state size (repeatable), e.g. mamba2=state_size")
    parser.add_argument("--max-minutes", type=float, default=0.0,
                        help="wall-time budget of the whole sweep; each run gets an equal share of what is left")
    parser.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default=d.precision, choices=("auto", "fp32", "bf16"),
                        help="auto = bf16 autocast on CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile each block")
    parser.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--out", default=d.out_dir, help="writes mqar.json and mqar.png here (runs/ beside them)")
    parser.add_argument("--keep-runs", action="store_true", help="keep each run's final checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no per-run lines")


def _run_mqar(args: argparse.Namespace) -> int:
    from ..eval.mqar import ZOOLOGY_TEST, ZOOLOGY_TRAIN, parse_segments
    from ..eval.mqar_sweep import STATE_FIELDS, MQARSweepConfig, plot_sweep, run_sweep, steps_for_epochs
    from ..io import atomic_write_text

    out = Path(args.out)
    if (out / "mqar.json").exists():
        raise ValueError(f"{str(out)!r} already holds an MQAR sweep (mqar.json); choose another --out")
    state_fields = dict(STATE_FIELDS)
    for item in args.state_field:
        arch, sep, name = item.partition("=")
        if not sep or not arch:
            raise ValueError(f"--state-field {item!r}: write ARCH=FIELD (FIELD empty for none)")
        state_fields[arch] = name or None
    config = MQARSweepConfig(
        archs=args.archs, state_sizes=args.state_sizes, d_models=args.d_models, lrs=args.lrs, num_layers=args.layers,
        train_segments=ZOOLOGY_TRAIN if args.train == "zoology" else parse_segments(args.train, 20_000),
        test_segments=ZOOLOGY_TEST if args.test == "zoology" else parse_segments(args.test, 1000),
        target=args.target, vocab_size=args.vocab_size, steps=args.steps, batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        window_size=args.window_size, max_seconds=60 * args.max_minutes, device=args.device,
        precision=args.precision, compile=args.compile, seed=args.seed, out_dir=str(out),
        eval_batch_size=args.eval_batch_size, keep_runs=args.keep_runs, state_fields=state_fields)
    if args.epochs > 0:
        config.steps = steps_for_epochs(config, args.epochs)
    target = config.target_segment().name

    def report_run(i: int, n: int, record: dict) -> None:
        if not args.quiet:
            state = "full" if record["state_size"] is None else record["state_size"]
            print(f"[{i + 1}/{n}] {record['arch']} d={record['d_model']} n={state} lr={record['lr']:.2e}: "
                  f"{target} acc {record['accuracy'][target]:.3f}, loss {record['final_loss']:.3f}, "
                  f"{record['steps']} steps in {record['train_seconds']:.0f}s", flush=True)

    report = run_sweep(config, on_run=report_run)
    atomic_write_text(out / "mqar.json", json.dumps(report, indent=1) + "\n")
    plot_sweep(report, out / "mqar.png")
    print(f"best over learning rates, accuracy at {target}:")
    for row in report["best"]:
        state = "full" if row["state_size"] is None else row["state_size"]
        print(f"  {row['arch']:<13} d={row['d_model']:<4} n={state!s:<5} acc {row['accuracy']:.3f} "
              f"(lr {row['lr']:.2e}, state {row['state_bytes']:,} bytes)")
    print(f"wrote {out / 'mqar.json'} and {out / 'mqar.png'} ({len(report['runs'])} of {report['planned_runs']} "
          f"runs, {report['seconds']:.0f}s)")
    return 0


# ---------------------------------------------------------------------------------------------------------- niah
def _add_niah_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("model", help="Hugging Face model folder (slimkv, RecurFormer or any causal LM) or run directory")
    parser.add_argument("--haystack", default="heldout",
                        help="the filler text: a corpus split (heldout, train) of `slimkv fetch corpus`, or a UTF-8 "
                             "text file (documents separated by two blank lines)")
    parser.add_argument("--lengths", type=_csv(int), default="1024,2048,4096,8192,16384,32768",
                        help="prompt lengths in tokens; those beyond the model's max_position_embeddings are skipped")
    parser.add_argument("--depths", type=_csv(float), default="0,10,20,30,40,50,60,70,80,90,100",
                        help="needle depths in percent of the haystack")
    parser.add_argument("--trials", type=int, default=1, help="prompts (different pass keys) per cell")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--prefill-chunk", type=int, default=0,
                        help="prefill the prompt in pieces of N tokens, carrying the cache (0 = one forward)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pass keys")
    parser.add_argument("--data-dir", default=None, help="corpus data directory (default $SLIMKV_DATA or ./data)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--out", default="runs/niah", help="writes niah.json and niah.png here")
    parser.add_argument("--quiet", action="store_true", help="no per-prompt lines")


def _haystack_documents(target: str, data_dir: str | None) -> tuple[list[str], str]:
    path = Path(target)
    if path.is_file():
        text = _read_text_file(path)
        return [doc for doc in text.split("\n\n\n") if doc.strip()], str(path)
    if target in SPLIT_NAMES:
        from ..data import fetch_corpus, read_split_documents

        info = fetch_corpus(data_dir, progress=False)
        return read_split_documents(info, target), f"corpus split {target}"
    raise FileNotFoundError(f"--haystack {target!r} is neither a file nor a corpus split ({', '.join(SPLIT_NAMES)})")


def _run_niah(args: argparse.Namespace) -> int:
    from ..bench.ops import machine_header
    from ..eval.loading import load_model_and_tokenizer
    from ..eval.niah import NIAHConfig, plot_heatmap, run_niah
    from ..io import atomic_write_text

    if any(not 0 <= d <= 100 for d in args.depths):
        raise ValueError(f"--depths are percentages in [0, 100], got {', '.join(f'{d:g}' for d in args.depths)}")
    model, tokenizer = load_model_and_tokenizer(args.model)
    if tokenizer is None:
        raise ValueError(f"{args.model!r} has no tokenizer (tokenizer.json); save one beside the model")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    model = model.to(args.device, dtype=getattr(torch, args.dtype))
    documents, what = _haystack_documents(args.haystack, args.data_dir)
    config = NIAHConfig(lengths=args.lengths, depths=tuple(d / 100 for d in args.depths), trials=args.trials,
                        max_new_tokens=args.max_new_tokens, prefill_chunk=args.prefill_chunk, seed=args.seed)

    def show(row) -> None:
        if not args.quiet:
            mark = "ok  " if row.correct else "miss"
            print(f"{mark} length {row.length:>6} depth {100 * row.depth:>5.1f}%  key {row.key}  got "
                  f"{row.completion.strip()[:24]!r}", flush=True)

    result = run_niah(model, tokenizer, documents, config, progress=show)
    report = {"header": machine_header(args.device), "model": str(args.model), "haystack": what,
              "config": {**vars(args)}, **result.as_dict()}
    out = Path(args.out)
    atomic_write_text(out / "niah.json", json.dumps(report, indent=1) + "\n")
    plot_heatmap(report, out / "niah.png", title=f"{Path(args.model).name}: needle in a haystack ({what}), "
                                                 f"mean exact match {result.mean_accuracy:.2f}")
    print(f"mean exact match {result.mean_accuracy:.3f} over {len(result.lengths)} lengths x {len(result.depths)} "
          f"depths x {args.trials} trials ({result.seconds:.0f}s)")
    for length, row in zip(result.lengths, result.accuracy):
        print(f"  {length:>6} tokens: " + " ".join(f"{a:.2f}" for a in row))
    if result.skipped_lengths:
        print(f"  skipped (beyond the model's position limit): {', '.join(map(str, result.skipped_lengths))}")
    print(f"wrote {out / 'niah.json'} and {out / 'niah.png'}")
    return 0


# ---------------------------------------------------------------------------------------------------- lm-tasks
def _add_lm_tasks_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--text", default="heldout",
                        help="source text: a corpus split (heldout, train) of `slimkv fetch corpus`, or a UTF-8 file "
                             "(documents separated by two blank lines)")
    parser.add_argument("--out", default=None, help="task folder (default <data dir>/lm_tasks)")
    parser.add_argument("--max-chars", type=int, default=4000, help="characters per perplexity piece")
    parser.add_argument("--max-pieces", type=int, default=0, help="perplexity pieces kept (0 = all)")
    parser.add_argument("--mc-items", type=int, default=500, help="multiple-choice items")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="corpus data directory (default $SLIMKV_DATA or ./data)")


def _run_lm_tasks(args: argparse.Namespace) -> int:
    from ..data.files import data_root
    from ..eval.lm_harness import MC_TASK, PPL_TASK, write_tasks

    documents, what = _haystack_documents(args.text, args.data_dir)
    out = Path(args.out) if args.out else data_root(args.data_dir) / "lm_tasks"
    paths = write_tasks(out, documents, source=what, max_chars=args.max_chars, max_pieces=args.max_pieces,
                        mc_items=args.mc_items, seed=args.seed)
    for task, path in paths.items():
        lines = sum(1 for _ in open(path.with_suffix(".jsonl"), encoding="utf-8"))
        print(f"{task}: {path} ({lines} documents from {what})")
    print("run, for example:\n"
          f"  lm_eval --model slimkv --model_args pretrained=runs/main/model --include_path {out} "
          f"--tasks {PPL_TASK},{MC_TASK} --device cpu --batch_size 8\n"
          f"  lm_eval --model hf --model_args pretrained=runs/main/model,trust_remote_code=True --include_path {out} "
          f"--tasks {PPL_TASK},{MC_TASK}")
    return 0


TASKS = {
    "mqar": ("multi-query associative recall (Zoology protocol): train and score a sweep of model kind x state "
             "size x learning rate on the project trainer; writes mqar.json and mqar.png",
             _add_mqar_arguments, _run_mqar),
    "niah": ("needle in a haystack: pass-key retrieval over real corpus text, a grid of context length x needle "
             "depth, exact match; writes niah.json and niah.png", _add_niah_arguments, _run_niah),
    "lm-tasks": ("write lm-evaluation-harness tasks built from the corpus's held-out split: held-out perplexity "
                 f"(loglikelihood_rolling) and a 4-way sentence-continuation multiple choice",
                 _add_lm_tasks_arguments, _run_lm_tasks),
}
