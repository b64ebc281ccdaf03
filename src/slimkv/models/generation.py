"""Fast generate() for models with a preallocated constant-size cache: one fused step per token, CUDA graphs on GPU.

    out = model.generate(ids, attention_mask=mask, max_new_tokens=128)               # graph decode on CUDA
    out = model.generate(ids, max_new_tokens=128, do_sample=True, top_p=0.9, decode="eager")

How a call runs (the gpt-fast / mamba_ssm `cg=True` recipe, inside the usual Hugging Face entry point):
1. The generation settings are merged the way transformers merges them (call kwargs > generation_config > the
   model's generation_config > defaults). Anything this loop does not implement (beams, repetition penalties,
   logits processors, scores, ...) goes to transformers' own generate(), unchanged.
2. The batch is rounded up to a bucket (1, 2, 4, ... rows) that owns a static cache, static token buffers and, on
   CUDA, one captured CUDA graph per sampling setting. The graph holds the whole token step: embedding, every layer's
   fused step (ops/decode), the LM head, temperature / top-k / top-p sampling and the end-of-sequence bookkeeping.
3. The prompt is prefilled through the sequence kernels, in chunks so a 128K prompt never holds 128K tokens of
   activations; then each new token is one graph replay. The host checks for "all finished" only every few tokens,
   so the GPU runs the replays back to back.
The same loop runs eagerly (no graph) on CPU, with decode="eager", or for a model without the `decode_step` hook.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .compat import pop_cache, with_cache

logger = logging.getLogger(__name__)

DECODE_MODES = ("auto", "graph", "eager")
# tokens between host checks for "every row finished" (each check is a device sync)
FINISH_CHECK_EVERY = 16
# prompt tokens per prefill forward, summed over the batch (bounds prefill activations)
PREFILL_TOKENS = 65536

# generation-config fields and the values at which they change nothing; any other value needs transformers' loop
_NEUTRAL = {
    "num_beams": (None, 1), "num_return_sequences": (None, 1), "num_beam_groups": (None, 1),
    "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "force_words_ids": (None,),
    "constraints": (None,), "sequence_bias": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "min_p": (None,), "top_h": (None,),
    "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0), "guidance_scale": (None, 1.0),
    "renormalize_logits": (None, False), "remove_invalid_values": (None, False),
    "exponential_decay_length_penalty": (None,), "watermarking_config": (None,), "stop_strings": (None,),
    "max_time": (None,), "output_scores": (None, False), "output_logits": (None, False),
    "output_attentions": (None, False), "output_hidden_states": (None, False), "cache_implementation": (None,),
    "penalty_alpha": (None,), "dola_layers": (None,), "token_healing": (None, False), "low_memory": (None, False),
    "prompt_lookup_num_tokens": (None,), "assistant_early_exit": (None,), "diversity_penalty": (None, 0.0),
}
# keyword arguments of generate() that are model inputs this loop understands
_MODEL_INPUTS = {"attention_mask", "cache", "past_key_values", "use_cache"}
# generate() arguments that only transformers' loop implements
_HF_ONLY_ARGS = ("logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus",
                 "assistant_model", "negative_prompt_ids", "negative_prompt_attention_mask", "custom_generate")


@dataclass(frozen=True)
class SamplingPlan:
    """Everything the captured step bakes in; a different plan is a different graph."""

    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    min_new_tokens: int


def choose_tokens(logits: torch.Tensor, plan: SamplingPlan, generated: torch.Tensor,
                  eos: torch.Tensor) -> torch.Tensor:
    """Next token per row from float32 logits [B, V], with transformers' semantics: min_new_tokens masks EOS,
    then greedy argmax, or temperature -> top-k -> top-p -> a sample. `generated` ([] long) counts tokens so far;
    `eos` holds the EOS ids on the device. Graph-safe: no host syncs or copies; sampling uses the exponential race
    (argmax p / E with E ~ Exp(1)), which draws from the same distribution as a multinomial sample."""
    if plan.min_new_tokens > 0 and plan.eos_token_ids:
        is_eos = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device).index_fill_(0, eos, True)
        logits = logits.masked_fill(is_eos & (generated < plan.min_new_tokens), float("-inf"))
    if not plan.do_sample:
        return logits.argmax(dim=-1)
    if plan.temperature != 1.0:
        logits = logits / plan.temperature
    if plan.top_k > 0:
        kth = torch.topk(logits, min(plan.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if plan.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= 1 - plan.top_p
        remove[..., -1] = False  # the most likely token always stays
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    probs = logits.softmax(dim=-1)
    return (probs / torch.empty_like(probs).exponential_(1)).argmax(dim=-1)


class _DecodeState:
    """Static buffers of one batch bucket: the cache, the token fed next, finished flags and the step counter.
    `capacity`: tokens per row for a model whose cache has KV slots (RecurFormer's kept heads), else None."""

    def __init__(self, model, rows: int, dtype: torch.dtype, device: torch.device, capacity: int | None = None):
        self.rows = rows
        sized = {} if capacity is None else {"capacity": capacity}
        self.cache = model.allocate_cache(rows, dtype=dtype, device=device, **sized)
        self.tokens = torch.zeros(rows, dtype=torch.long, device=device)
        self.finished = torch.ones(rows, dtype=torch.bool, device=device)
        self.finished_at = torch.zeros(rows, dtype=torch.long, device=device)
        self.generated = torch.zeros((), dtype=torch.long, device=device)
        self.graphs: dict[SamplingPlan, torch.cuda.CUDAGraph] = {}


def _step(model, state: _DecodeState, plan: SamplingPlan, eos: torch.Tensor) -> None:
    """One token for every row of the bucket, entirely on the device (the body a CUDA graph captures)."""
    h = model.model.decode_step(state.tokens, state.cache)
    logits = model.lm_head(h.to(model.lm_head.weight.dtype)).float()
    _finish(state, choose_tokens(logits, plan, state.generated, eos), plan, eos)


def _finish(state: _DecodeState, tokens: torch.Tensor, plan: SamplingPlan, eos: torch.Tensor) -> None:
    """Finished rows emit padding; a row finishes on an EOS token; the token becomes the next input."""
    tokens = torch.where(state.finished, plan.pad_token_id, tokens)
    newly = (tokens[:, None] == eos[None, :]).any(dim=-1) & ~state.finished
    state.finished_at.copy_(torch.where(newly, state.generated, state.finished_at))
    state.finished.logical_or_(newly)
    state.tokens.copy_(tokens)
    state.generated.add_(1)


def bucket_rows(batch: int) -> int:
    """Rows of the static bucket that serves `batch` sequences: powers of two up to 256, then multiples of 256."""
    if batch <= 256:
        return 1 << (batch - 1).bit_length()
    return -(-batch // 256) * 256


class DecodeGraphs:
    """A model's decode buckets and their CUDA graphs, kept across generate() calls (capture happens once)."""

    def __init__(self):
        self.states: dict[tuple, _DecodeState] = {}
        self.pool = None

    def state(self, model, rows: int, dtype: torch.dtype, device: torch.device,
              capacity: int | None = None) -> _DecodeState:
        key = (rows, dtype, device, capacity)
        if key not in self.states:
            self.states[key] = _DecodeState(model, rows, dtype, device, capacity)
        return self.states[key]

    def replay(self, model, state: _DecodeState, plan: SamplingPlan, eos: torch.Tensor, use_graph: bool) -> None:
        if not use_graph:
            _step(model, state, plan, eos)
            return
        self.prepare(model, state, plan, eos)
        state.graphs[plan].replay()

    def prepare(self, model, state: _DecodeState, plan: SamplingPlan, eos: torch.Tensor) -> None:
        """Capture the bucket's graph for `plan` if it has none. Call it BEFORE filling the cache: the warm-up
        steps (Triton compiles, cuBLAS picks its kernels) run on whatever the buffers hold, and copying a large
        cache aside to protect it would double its memory."""
        if plan in state.graphs:
            return
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                _step(model, state, plan, eos)
        torch.cuda.current_stream().wait_stream(stream)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            _step(model, state, plan, eos)
        state.graphs[plan] = graph
        logger.info("captured a decode graph: %d rows, %s", state.rows, plan)

    def clear(self) -> None:
        self.states.clear()
        self.pool = None


class FastGenerationMixin:
    """Put before transformers' GenerationMixin: generate() runs the fast loop when it can, transformers' otherwise.

    The model provides `allocate_cache(rows, dtype, device)`, `model.decode_step(tokens, cache)` (one token per row,
    graph-capturable) and a sequence forward that fills the cache. A model whose cache also holds KV slots defines
    `cache_capacity(total_tokens)` and takes `allocate_cache(..., capacity=...)`: the bucket then holds that many
    tokens per row. Extra generate() keyword: `decode` = "auto" (CUDA graphs on CUDA), "graph" or "eager" (same loop,
    no graphs: the documented fallback).
    """

    def _decode_graphs(self) -> DecodeGraphs:
        graphs = self.__dict__.get("_slimkv_decode_graphs")
        if graphs is None:
            graphs = self.__dict__["_slimkv_decode_graphs"] = DecodeGraphs()
        return graphs

    def release_decode_graphs(self) -> None:
        """Free the static decode buckets and graphs (they are rebuilt on the next generate())."""
        self._decode_graphs().clear()

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, streamer=None, **kwargs):
        decode = kwargs.pop("decode", "auto")
        if decode not in DECODE_MODES:
            raise ValueError(f"generate: decode must be one of {DECODE_MODES}; got {decode!r}")
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        plan = self._fast_plan(input_ids, generation_config, kwargs)
        if plan is None:
            return super().generate(inputs, generation_config=generation_config, streamer=streamer, **kwargs)
        config, sampling, model_kwargs = plan
        return self._fast_generate(input_ids, config, sampling, model_kwargs, streamer, decode)

    def _fast_plan(self, input_ids, generation_config, kwargs):
        """(merged config, SamplingPlan, model kwargs) when the fast loop implements this call, else None."""
        if input_ids is None or input_ids.dim() != 2 or any(kwargs.get(a) is not None for a in _HF_ONLY_ARGS):
            return None
        rest = {k: v for k, v in kwargs.items() if k not in _HF_ONLY_ARGS and k != "input_ids"}
        try:
            config, model_kwargs = self._prepare_generation_config(generation_config, **rest)
        except (TypeError, AttributeError):  # a transformers release without this private helper
            return None
        if config.use_cache is False or any(k not in _MODEL_INPUTS for k, v in model_kwargs.items() if v is not None):
            return None
        if any(getattr(config, name, None) not in neutral for name, neutral in _NEUTRAL.items()):
            return None
        eos = config.eos_token_id
        eos = () if eos is None else tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
        pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
        if isinstance(pad, (list, tuple)):
            pad = pad[0]
        prompt = input_ids.shape[1]
        min_new = max(config.min_new_tokens or 0, (config.min_length or 0) - prompt, 0)
        sampling = SamplingPlan(
            do_sample=bool(config.do_sample), temperature=float(config.temperature or 1.0),
            top_k=int(config.top_k or 0) if config.do_sample else 0,
            top_p=float(config.top_p if config.top_p is not None else 1.0) if config.do_sample else 1.0,
            eos_token_ids=eos, pad_token_id=int(pad), min_new_tokens=int(min_new))
        if sampling.do_sample and sampling.temperature <= 0:
            raise ValueError(f"generate: temperature must be > 0 when sampling; got {sampling.temperature}")
        return config, sampling, model_kwargs

    def _fast_generate(self, input_ids, config, plan: SamplingPlan, model_kwargs, streamer, decode: str):
        B, prompt = input_ids.shape
        device = input_ids.device
        if config.max_new_tokens is not None:
            max_new = int(config.max_new_tokens)
        else:
            max_new = int(config.max_length or 20) - prompt
        if max_new <= 0:
            return input_ids
        limit = getattr(self.config, "max_position_embeddings", None)
        if limit and prompt + max_new > limit:
            raise ValueError(f"prompt ({prompt} tokens) + max_new_tokens ({max_new}) exceeds the model's "
                             f"max_position_embeddings={limit}")
        user_cache = pop_cache(model_kwargs)
        mask = model_kwargs.get("attention_mask")
        dtype = self.get_input_embeddings().weight.dtype
        # one new token comes from the prefill alone: no decode step to capture (2026-12-03: a graph captured inside
        # the first timed generate(1) of eval/speed.py made that run's ms/token read 2.3 against 5.0 for the others)
        use_graph = device.type == "cuda" and decode != "eager" and max_new > 1
        if decode == "graph" and device.type != "cuda":
            raise ValueError("generate: decode='graph' needs a CUDA device; use decode='auto' or 'eager'")

        graphs = self._decode_graphs()
        sizing = getattr(self, "cache_capacity", None)
        capacity = sizing(prompt + max_new) if sizing is not None else None
        state = graphs.state(self, bucket_rows(B), dtype, device, capacity)
        eos = torch.tensor(plan.eos_token_ids, dtype=torch.long, device=device)
        if use_graph:
            graphs.prepare(self, state, plan, eos)  # before the prefill: warm-up steps scribble on the buffers
        cache = state.cache
        cache.reset()
        if user_cache is not None:
            if user_cache.batch_size != B:
                raise ValueError(f"generate: the cache holds {user_cache.batch_size} rows; the batch has {B}")
            cache.copy_from(user_cache)
        start = cache.seen_tokens
        if start >= prompt:
            raise ValueError(f"generate: the cache has already consumed {start} tokens; input_ids has {prompt}, so "
                             "there is no new token to continue from")
        rows = cache.rows(B)
        logits = self._fast_prefill(input_ids[:, start:], mask, rows)
        cache.seen_tokens = rows.seen_tokens

        state.finished.fill_(True)  # bucket rows past the batch are padding from the start
        state.finished[:B] = False
        state.finished_at.fill_(max_new)
        state.generated.zero_()
        first = choose_tokens(logits, plan, state.generated, eos)
        tokens = torch.zeros(state.rows, dtype=torch.long, device=device)
        tokens[:B] = first
        _finish(state, tokens, plan, eos)

        out = torch.empty(B, max_new, dtype=torch.long, device=device)
        out[:, 0] = state.tokens[:B]
        if streamer is not None:
            streamer.put(input_ids.cpu())
            streamer.put(out[:, 0].cpu())
        # a returned or reused cache must hold exactly what transformers' loop would: check every token then
        check_every = 1 if (user_cache is not None or config.return_dict_in_generate) else FINISH_CHECK_EVERY
        steps = 1
        while steps < max_new:
            if plan.eos_token_ids and steps % check_every == 0 and bool(state.finished[:B].all()):
                break
            graphs.replay(self, state, plan, eos, use_graph)
            cache.seen_tokens += 1
            out[:, steps] = state.tokens[:B]
            if streamer is not None:
                streamer.put(out[:, steps].cpu())
            steps += 1
        if streamer is not None:
            streamer.end()
        if plan.eos_token_ids and bool(state.finished[:B].all()):
            steps = min(steps, int(state.finished_at[:B].max()) + 1)
        sequences = torch.cat([input_ids, out[:, :steps]], dim=1)
        if user_cache is not None:
            user_cache.copy_from(cache.rows(B))
        if not config.return_dict_in_generate:
            return sequences
        from transformers.generation.utils import GenerateDecoderOnlyOutput

        result = user_cache if user_cache is not None else cache.clone(B)
        return GenerateDecoderOnlyOutput(sequences=sequences, **with_cache(result))

    def _fast_prefill(self, ids: torch.Tensor, mask: torch.Tensor | None, cache) -> torch.Tensor:
        """Feed ids [B, T] into the cache in chunks of at most PREFILL_TOKENS tokens (over the batch); float32
        logits [B, V] of the last token."""
        B, T = ids.shape
        chunk = max(1, PREFILL_TOKENS // B)
        done = cache.seen_tokens
        logits = None
        for lo in range(0, T, chunk):
            hi = min(lo + chunk, T)
            part_mask = None if mask is None else mask[:, : done + hi]
            out = self(input_ids=ids[:, lo:hi], attention_mask=part_mask, use_cache=True, logits_to_keep=1,
                       **with_cache(cache))
            logits = out.logits[:, -1]
        return logits.float()
