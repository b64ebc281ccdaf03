"""RodimusConfig: one config for Rodimus (purely recurrent) and Rodimus+ (recurrent + SW-SKA + FFN)."""
from __future__ import annotations

import math

from transformers import PreTrainedConfig

BLOCK_TYPES = ("rodimus", "rodimus_plus", "mamba2", "gla")
# the Mamba2 baseline's value dims per head (Mamba2's own default)
MAMBA2_HEAD_DIM = 64


class RodimusConfig(PreTrainedConfig):
    r"""
    Args:
        block_type: "rodimus" (X + DDTS(norm X)) or "rodimus_plus" (two-hop residual with SW-SKA and a SwiGLU FFN);
            the baselines on the same scaffolding: "mamba2" (X + Mamba2(norm X), SSD with state size mem_size, inner
            width expand_ratio * d in heads of 64) and "gla" (X + GLA(norm X); X + SwiGLU(norm X), num_heads heads of
            key dim mem_size).
        hidden_size: model width d.  num_hidden_layers: L.  vocab_size: V.
        expand_ratio: DDTS inner width e = align8(d * expand_ratio).  mem_size: m, the state's key size.
        conv_size: short-conv kernel.  input_gate_low_rank: rank of the channel gate ("auto" = max(d // 64, 16)).
        normalize_epsilon: floor of ||k|| when normalising keys (1e-12; 1e-5 in the Coder checkpoints).
        num_heads: SW-SKA query/value heads (default d // 128).  window_size: official W; each query sees the W // 2
            previous tokens and itself.  ffn_expand_ratio: FFN width f = align8(d * ratio).
        rope_theta, rotary_dim: RoPE base and rotated dims (None = full head dim).
        gla_backend / attn_backend: "auto" (Triton/Flex on CUDA, chunked PyTorch elsewhere) or a named backend.
        decode_backend: the one-token step kernels (ops/decode): "auto" (fused Triton on CUDA), "torch" or "triton".
        kernel_backend: the fused elementwise ops of the sequence path (norms, Mamba2's per-head norm, DDTS gates, conv +
            SiLU, SwiGLU, the chunked loss): "auto" (Triton on CUDA), "torch" (the plain PyTorch specs) or "triton".
    """

    model_type = "slimkv_rodimus"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 1024,
        num_hidden_layers: int = 24,
        block_type: str = "rodimus",
        expand_ratio: float = 2.0,
        mem_size: int = 64,
        conv_size: int = 4,
        input_gate_low_rank: int | str = "auto",
        normalize_epsilon: float = 1e-12,
        num_heads: int | None = None,
        window_size: int = 4096,
        ffn_expand_ratio: float = 4 / 3,
        rope_theta: float = 10000.0,
        rotary_dim: int | None = None,
        rms_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        max_position_embeddings: int = 2048,
        residual_in_fp32: bool = True,
        gla_backend: str = "auto",
        attn_backend: str = "auto",
        decode_backend: str = "auto",
        kernel_backend: str = "auto",
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"block_type must be one of {BLOCK_TYPES}, got {block_type!r}")
        # every size and rate is range-checked here, so a bad value fails on construction with the field named
        # instead of deep inside a forward pass ("not enough values to unpack" for mem_size=0)
        sizes = {"vocab_size": vocab_size, "hidden_size": hidden_size, "num_hidden_layers": num_hidden_layers,
                 "mem_size": mem_size, "conv_size": conv_size, "max_position_embeddings": max_position_embeddings,
                 "num_heads": num_heads}
        for name, value in sizes.items():
            if name == "num_heads" and value is None:
                num_heads = value = max(hidden_size // 128, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RodimusConfig field {name!r} must be an integer >= 1, got {value!r}")
        for name, value, low in (("expand_ratio", expand_ratio, 0.0), ("ffn_expand_ratio", ffn_expand_ratio, 0.0),
                                 ("rope_theta", rope_theta, 0.0), ("rms_norm_eps", rms_norm_eps, 0.0),
                                 ("normalize_epsilon", normalize_epsilon, 0.0),
                                 ("initializer_range", initializer_range, None)):
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or (value <= low if low is not None else value < 0):
                rule = "> 0" if low is not None else ">= 0"
                raise ValueError(f"RodimusConfig field {name!r} must be a finite number {rule}, got {value!r}")
        if input_gate_low_rank != "auto" and (not isinstance(input_gate_low_rank, int) or input_gate_low_rank < 1):
            raise ValueError(f"RodimusConfig field 'input_gate_low_rank' must be 'auto' or an integer >= 1, got "
                             f"{input_gate_low_rank!r}")
        if window_size is not None and (not isinstance(window_size, int) or window_size < 2 or window_size % 2):
            raise ValueError(f"RodimusConfig field 'window_size' must be a positive even number (each query sees "
                             f"window_size // 2 previous tokens) or None, got {window_size!r}")
        if block_type in ("rodimus_plus", "gla") and hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        if block_type == "mamba2" and (int(hidden_size * expand_ratio) + 7) // 8 * 8 % MAMBA2_HEAD_DIM:
            raise ValueError(f"mamba2: the inner width align8(hidden_size * expand_ratio) must be a multiple of "
                             f"{MAMBA2_HEAD_DIM} (the head dim); got hidden_size={hidden_size}, "
                             f"expand_ratio={expand_ratio}")
        head_dim = hidden_size // num_heads
        if rotary_dim is not None and (not isinstance(rotary_dim, int) or rotary_dim < 2 or rotary_dim % 2
                                       or rotary_dim > head_dim):
            raise ValueError(f"RodimusConfig field 'rotary_dim' must be an even number of dims in [2, head dim "
                             f"{head_dim}] or None, got {rotary_dim!r}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.block_type = block_type
        self.expand_ratio = expand_ratio
        self.mem_size = mem_size
        self.conv_size = conv_size
        self.input_gate_low_rank = input_gate_low_rank
        self.normalize_epsilon = normalize_epsilon
        self.num_heads = num_heads
        self.window_size = window_size
        self.ffn_expand_ratio = ffn_expand_ratio
        self.rope_theta = rope_theta
        self.rotary_dim = rotary_dim
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.max_position_embeddings = max_position_embeddings
        self.residual_in_fp32 = residual_in_fp32
        self.gla_backend = gla_backend
        self.attn_backend = attn_backend
        self.decode_backend = decode_backend
        self.kernel_backend = kernel_backend
        self.use_cache = use_cache
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **kwargs,
        )

    @property
    def window(self) -> int | None:
        """Previous tokens each SW-SKA query sees (the official training semantics: W // 2)."""
        return None if self.window_size is None else self.window_size // 2

    @property
    def inner_size(self) -> int:
        """The mixer's inner width e = align8(d * expand_ratio) (DDTS, Mamba2)."""
        return (int(self.hidden_size * self.expand_ratio) + 7) // 8 * 8

    @property
    def residual_branches(self) -> int:
        """Branches that add into the residual stream per layer (the output-projection init scale)."""
        return {"rodimus": 1, "rodimus_plus": 3, "mamba2": 1, "gla": 2}[self.block_type]

    @property
    def attn_head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def ffn_size(self) -> int:
        return (int(self.hidden_size * self.ffn_expand_ratio) + 7) // 8 * 8
