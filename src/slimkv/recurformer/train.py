"""RecurFormer's training recipe on the project trainer: learned selection gates, Stage A, Stage B and the control.

    result = train_recurformer(load_recurformer_config("smollm2", ["--recurformer.stage=A"]))

Each stage is a module whose forward(input_ids, targets) returns the loss, handed to slimkv.train.Trainer as a
recipe (slimkv/train/recipe.py): bf16 autocast, activation checkpointing, FSDP2 under torchrun, resume, SIGTERM
safety, JSONL + TensorBoard all come from the trainer. The teacher is a frozen copy held outside the module tree (not
trained, not checkpointed, not sharded; moved with the module).

- gates (DuoAttention; docs/recurformer.md, "Training"; at recurformer.lr_gates): every KV unit of the ORIGINAL
  model gets a gate alpha in [0, 1] mixing its full attention with streaming attention (sinks + window);
  loss = relative L2 between the gated and the ungated final hidden states + gate_sparsity x mean(alpha). Units
  with the lowest alpha stream best: the export writes gates.json, whose `unit_scores` (1 - alpha)
  `slimkv recurformer convert --select learned` ranks.
- A: the teacher's forward records each converted layer's normed attention input and its replaced heads' outputs
  (before o_proj); each branch learns to produce those outputs from that input (relative MSE, the mean over
  layers). Only branch weights train; layers are independent, so no student forward is needed.
- B: next-token cross-entropy + kl_weight x KL(teacher || student) per token, one fused pass over both LM heads
  in chunks of tokens (ops/distill.py: each logit matmul once, the gradient computed in the same pass);
  new branch weights at recurformer.lr_branch, pretrained ones at recurformer.lr_base. In eval mode the module
  returns the cross-entropy alone (held-out perplexity).
- control: Stage B of the unconverted model (every weight at lr_base), same data and steps.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..io import atomic_write_text, output_folder
from ..layers.branches import branch_class, is_new_branch_parameter
from ..models.recurformer import RecurFormerForCausalLM, attention_geometry, check_family
from ..ops.cross_entropy import linear_cross_entropy
from ..ops.distill import linear_distill
from ..ops.rope import apply_rope, rope_cos_sin
from ..ops.window_attn import window_attention
from ..train.config import OptimConfig
from ..train.optim import no_weight_decay_names
from ..train.parallelize import unwrap
from .config import RecurFormerRunConfig, load_recurformer_config  # noqa: F401  (re-exported for callers)

logger = logging.getLogger(__name__)

# below this max - min of the exported gates, their ranking of the units is noise (recurformer/config.py lr_gates)
GATES_SEPARATED = 1e-3


class _WithTeacher(nn.Module):
    """A module that holds a frozen teacher outside its module tree and moves it along in .to()/.cuda()."""

    def __init__(self, teacher: nn.Module | None):
        super().__init__()
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        self.__dict__["teacher"] = teacher

    def _apply(self, fn, recurse=True):
        if self.__dict__["teacher"] is not None:
            self.__dict__["teacher"]._apply(fn)
        return super()._apply(fn, recurse)


class UnitGates(_WithTeacher):
    """Stage gates: the original model with a gate per (layer, KV unit) between full and streaming attention."""

    def __init__(self, source: nn.Module, window: int, sinks: int, sparsity: float):
        super().__init__(None)
        check_family(source.config)
        self.geo = attention_geometry(source.config)
        self.config = source.config
        self.model = source.model
        source.requires_grad_(False)
        self.gates = nn.Parameter(torch.ones(self.geo.num_layers, self.geo.num_kv_heads))
        self.window, self.sinks, self.sparsity = window, sinks, sparsity
        self._gating = False
        self._stream: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self.model.layers):
            layer.self_attn.register_forward_pre_hook(self._streaming_heads(index), with_kwargs=True)
            layer.self_attn.o_proj.register_forward_pre_hook(self._mix(index))

    def _streaming_heads(self, index: int):
        def hook(attn, args, kwargs):
            if not self._gating:
                return None
            h = kwargs.get("hidden_states", args[0] if args else None)
            cos, sin = kwargs["position_embeddings"]
            D = self.geo.head_dim
            q = apply_rope(attn.q_proj(h).unflatten(-1, (-1, D)), cos, sin)
            k = apply_rope(attn.k_proj(h).unflatten(-1, (-1, D)), cos, sin)
            v = attn.v_proj(h).unflatten(-1, (-1, D))
            self._stream[index] = window_attention(q, k, v, self.window, sinks=self.sinks)
            return None
        return hook

    def _mix(self, index: int):
        def hook(o_proj, args):
            if not self._gating:
                return None
            full = args[0].unflatten(-1, (self.geo.num_heads, self.geo.head_dim))
            alpha = self.gates[index].clamp(0, 1).repeat_interleave(self.geo.heads_per_unit)[:, None]
            stream = self._stream.pop(index).to(full.dtype)
            return ((alpha * full + (1 - alpha) * stream).flatten(-2),)
        return hook

    def _end_gating_after_backward(self, grad: torch.Tensor) -> None:
        def end():
            self._gating = False
        torch.autograd.Variable._execution_engine.queue_callback(end)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None) -> CausalLMOutputWithPast:
        with torch.no_grad():
            self._gating = False
            reference = self.model(input_ids=input_ids, use_cache=False).last_hidden_state.float()
        self._gating = True
        gated = self.model(input_ids=input_ids, use_cache=False).last_hidden_state.float()
        if gated.requires_grad:
            # on until backward ends: with activation checkpointing backward re-runs each block's gated forward
            # (train/parallelize.py) and must save the same tensors (2026-12-04 on the H200, the flag reset as the
            # forward returned: 57 saved, 31 recomputed)
            gated.register_hook(self._end_gating_after_backward)
        else:
            self._gating = False
        distill = (gated - reference).pow(2).mean() / reference.pow(2).mean().clamp_min(1e-8)
        return CausalLMOutputWithPast(loss=distill + self.sparsity * self.gates.clamp(0, 1).mean())


class _AlignBlock(nn.Module):
    """One converted layer's branch in Stage A: relative MSE to the teacher's replaced heads from the same input."""

    def __init__(self, layer_idx: int, attn: nn.Module):
        super().__init__()
        self.layer_idx, self.replaced_heads, self.head_dim = layer_idx, attn.replaced_heads, attn.geo.head_dim
        self.branch = attn.branch

    def outputs(self, h: torch.Tensor, heads: torch.Tensor, rope=None, positions=None):
        """(the branch's output, the teacher's replaced heads), both [B, T, R, D] float32."""
        target = heads.unflatten(-1, (-1, self.head_dim))[:, :, self.replaced_heads].float()
        return self.branch(h, rope, positions).float(), target

    def forward(self, h: torch.Tensor, heads: torch.Tensor, rope=None, positions=None) -> torch.Tensor:
        got, target = self.outputs(h, heads, rope, positions)
        return F.mse_loss(got, target) / target.pow(2).mean().clamp_min(1e-8)


class BranchAlignment(_WithTeacher):
    """Stage A: the branches of a converted student, each fed the teacher's layer input."""

    def __init__(self, student: RecurFormerForCausalLM, teacher: nn.Module):
        super().__init__(teacher)
        if getattr(student.config, "mixer", None) is None or not student.config.num_replaced:
            raise ValueError("Stage A trains the branches of a converted model; the student has none")
        if _branch_is_pretrained(student):
            raise ValueError(f"the {student.config.mixer!r} branch reuses the pretrained rows and has no new weights: "
                             "skip Stage A (run Stage B)")
        self.config = student.config
        self.__dict__["student"] = student
        student.requires_grad_(False)
        blocks = [_AlignBlock(i, layer.self_attn) for i, layer in enumerate(student.model.layers)
                  if layer.self_attn.branch is not None]
        cls = branch_class(student.config.mixer)
        for block in blocks:
            for name, p in block.branch.named_parameters():
                # pretrained rows inside the branch (window_mamba2's window) stay as they are
                p.requires_grad_(is_new_branch_parameter(cls, name))
        # the RoPE frequencies of the student (branches with attention parts rotate q and k)
        self.__dict__["inv_freq"] = student.model.inv_freq
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(blocks)
        # per converted layer: the teacher's normed attention input and its heads before o_proj
        self._inputs: dict[int, torch.Tensor] = {}
        self._heads: dict[int, torch.Tensor] = {}
        for block in blocks:
            attn = teacher.model.layers[block.layer_idx].self_attn
            attn.register_forward_pre_hook(self._grab_input(block.layer_idx), with_kwargs=True)
            attn.o_proj.register_forward_pre_hook(self._grab_heads(block.layer_idx))

    def _grab_input(self, layer_idx: int):
        def hook(module, args, kwargs):
            self._inputs[layer_idx] = kwargs.get("hidden_states", args[0] if args else None).detach()
        return hook

    def _grab_heads(self, layer_idx: int):
        def hook(module, args):
            self._heads[layer_idx] = args[0].detach()
        return hook

    def _teacher_pass(self, input_ids: torch.Tensor):
        """Run the teacher (its hooks record every converted layer) -> the RoPE tables and positions of the batch."""
        with torch.no_grad():
            # the decoder alone; the LM head is not needed
            self.teacher.model(input_ids=input_ids, use_cache=False)
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        return rope_cos_sin(positions, 0, inv_freq=self.inv_freq(input_ids.device)), positions

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None) -> CausalLMOutputWithPast:
        rope, positions = self._teacher_pass(input_ids)
        losses = [block(self._inputs.pop(block.layer_idx), self._heads.pop(block.layer_idx), rope, positions)
                  for block in self.model.layers]
        return CausalLMOutputWithPast(loss=torch.stack(losses).mean())

    @torch.no_grad()
    def errors_by_position(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[converted layers, T]: each layer's squared error at every position, relative to its target's mean
        square over the whole batch, averaged over the batch, heads and channels. Its mean over positions is that
        layer's Stage A loss; how it grows past the training length says whether a branch extrapolates
        (benchmarks/recurformer_branch_length.py)."""
        rope, positions = self._teacher_pass(input_ids)
        rows = []
        for block in self.model.layers:
            got, target = block.outputs(self._inputs.pop(block.layer_idx), self._heads.pop(block.layer_idx), rope,
                                        positions)
            rows.append((got - target).pow(2).mean(dim=(0, 2, 3)) / target.pow(2).mean().clamp_min(1e-8))
        return torch.stack(rows)


class Distillation(_WithTeacher):
    """Stage B (and the control): next-token loss + kl_weight x KL(teacher || student); eval: the next-token loss."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, kl_weight: float, chunk: int):
        super().__init__(teacher if kl_weight > 0 else None)
        self.config = student.config
        self.__dict__["student"] = student
        self.model, self.lm_head = student.model, student.lm_head
        self.kl_weight, self.chunk = kl_weight, chunk

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor) -> CausalLMOutputWithPast:
        h = self.model(input_ids=input_ids, use_cache=False).last_hidden_state
        if not (self.training and self.teacher is not None):
            return CausalLMOutputWithPast(loss=linear_cross_entropy(h, self.lm_head.weight, targets))
        with torch.no_grad():
            teacher_h = self.teacher.model(input_ids=input_ids, use_cache=False).last_hidden_state
        # one pass over both heads, gradient included (ops/distill.py)
        loss = linear_distill(h, self.lm_head.weight, targets, teacher_h, self.teacher.lm_head.weight,
                              self.kl_weight, self.chunk)
        return CausalLMOutputWithPast(loss=loss)


def _branch_is_pretrained(model) -> bool:
    mixer = getattr(model.config, "mixer", None)
    return mixer is not None and branch_class(mixer).pretrained


def _load(folder: str | Path, what: str):
    from transformers import AutoModelForCausalLM

    from .. import models  # noqa: F401  (registers RecurFormer with the Auto classes)

    if not Path(folder, "config.json").is_file():
        raise FileNotFoundError(f"{what} folder not found: {folder} (no config.json); convert or fetch it first")
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _conversion(folder: str | Path) -> dict | None:
    path = Path(folder, "conversion.json")
    return json.loads(path.read_text()) if path.is_file() else None


class RecurFormerRecipe:
    """The trainer recipe (slimkv/train/recipe.py) of one RecurFormer stage."""

    def __init__(self, config: RecurFormerRunConfig):
        rf = config.recurformer
        self.config, self.settings = config, rf
        self.conversion = _conversion(rf.student)
        if rf.stage in ("A", "B") and not rf.control and self.conversion is None:
            raise ValueError(f"{rf.student} has no conversion.json: convert it first (slimkv recurformer convert), "
                             "or set recurformer.control=true to train the original")
        if (rf.control or rf.stage == "gates") and self.conversion is not None:
            raise ValueError(f"{rf.student} is a RecurFormer conversion; stage {rf.stage} "
                             f"{'control ' if rf.control else ''}runs take the original model")
        self.teacher_path = rf.teacher or (self.conversion or {}).get("source") or rf.student
        # the branches hold new weights (their own learning rate) unless they reuse the heads' rows (window); a
        # branch may hold both (window_mamba2: layers/branches.py pretrained_parts)
        self.branch_class = branch_class(self.conversion["mixer"]) if self.conversion is not None else None
        kind = "control" if rf.control else f"stage {rf.stage}"
        self.name = f"recurformer {kind} ({(self.conversion or {}).get('mixer', 'original')})"

    def build_model(self, config, vocab_size: int) -> nn.Module:
        rf = self.settings
        torch.manual_seed(config.train.seed)
        student = _load(rf.student, "recurformer.student")
        if rf.stage == "gates":
            return UnitGates(student, rf.gate_window, rf.gate_sinks, rf.gate_sparsity)
        needs_teacher = rf.stage == "A" or (rf.kl_weight > 0)
        teacher = _load(self.teacher_path, "teacher") if needs_teacher else None
        if rf.stage == "A":
            return BranchAlignment(student, teacher)
        if rf.lr_base == 0:
            for name, p in student.named_parameters():
                p.requires_grad_(self._is_new(name))
        return Distillation(student, teacher, rf.kl_weight, rf.kl_chunk)

    def _is_new(self, name: str) -> bool:
        """A parameter of a branch with new (not pretrained) weights."""
        if self.branch_class is None or ".branch." not in name:
            return False
        return is_new_branch_parameter(self.branch_class, name.split(".branch.", 1)[1])

    def param_groups(self, model: nn.Module, optim: OptimConfig) -> list[dict]:
        rf = self.settings
        no_decay = no_weight_decay_names(model)
        groups: dict[tuple[float, bool], list] = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if rf.stage == "gates":
                lr = rf.lr_gates
            elif rf.stage == "A":
                lr = optim.lr
            else:
                lr = rf.lr_branch if self._is_new(name) else rf.lr_base
            if lr > 0:
                groups.setdefault((lr, name in no_decay or name == "gates"), []).append(p)
        if not groups:
            raise ValueError("nothing to train: every learning rate of this stage is 0")
        return [{"params": params, "lr": lr, "weight_decay": 0.0 if exempt else optim.weight_decay}
                for (lr, exempt), params in groups.items()]

    def export(self, model: nn.Module, config, sources, target: Path, *, is_main: bool) -> None:
        """Gates: gates.json (+ a heatmap). Stage A / B: the student as a model folder (conversion.json kept)."""
        state = _full_state(model, config)
        if not is_main:
            return
        rf = self.settings
        with output_folder(target, command="recurformer train", overwrite=True) as tmp:
            if rf.stage == "gates":
                alpha = state["gates"].float().clamp(0, 1)
                spread = float(alpha.max() - alpha.min())
                if spread < GATES_SEPARATED:
                    logger.warning("the gates did not separate (max - min alpha = %.2g): a ranking by them is "
                                   "arbitrary; train more steps or raise recurformer.lr_gates", spread)
                record = {"source": rf.student, "alpha": alpha.tolist(), "unit_scores": (1 - alpha).tolist(),
                          "spread": spread, "window": rf.gate_window, "sinks": rf.gate_sinks,
                          "sparsity": rf.gate_sparsity, "lr_gates": rf.lr_gates}
                (tmp / "gates.json").write_text(json.dumps(record, indent=1) + "\n")
                plot_gates(alpha, tmp / "gates.png", rf.student)
                return
            student = unwrap(model).__dict__["student"]
            if config.train.parallel == "fsdp":
                # the sharded student is not whole on any rank: a fresh copy takes the gathered weights
                student = _load(rf.student, "recurformer.student")
                if rf.stage == "A":
                    names = _stage_a_names(unwrap(model))
                    student.load_state_dict({names[k]: v for k, v in state.items()}, strict=False)
                else:
                    student.load_state_dict(state)
            from transformers import AutoTokenizer

            student.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(rf.student).save_pretrained(tmp)
            if self.conversion is not None:
                (tmp / "conversion.json").write_text(json.dumps(self.conversion, indent=1) + "\n")


def _stage_a_names(model: BranchAlignment) -> dict[str, str]:
    """Stage A module names -> the student's parameter names."""
    names = {}
    for j, block in enumerate(model.model.layers):
        for name, _ in block.branch.named_parameters():
            names[f"model.layers.{j}.branch.{name}"] = f"model.layers.{block.layer_idx}.self_attn.branch.{name}"
    return names


def _full_state(model: nn.Module, config) -> dict[str, torch.Tensor]:
    """The whole state dict on CPU (gathered from every rank under FSDP: a collective, every rank calls it)."""
    if config.train.parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def plot_gates(alpha: torch.Tensor, path: Path, title: str) -> None:
    """Layers x KV units, colour = alpha (1 = keeps full attention, 0 = streams)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.5 + 0.5 * alpha.shape[1], 1.5 + 0.2 * alpha.shape[0]))
    image = ax.imshow(alpha.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xlabel("KV unit")
    ax.set_ylabel("layer")
    ax.set_title(f"learned gates (1 = full attention): {Path(title).name}", fontsize=8)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_recurformer(config: RecurFormerRunConfig, *, resume: str | bool | None = None,
                      allow_config_change: bool = False, progress: bool = True):
    """Run one stage on the project trainer; returns its TrainResult (the output folder is <run>/model)."""
    from ..train import Trainer
    from .data import training_sources

    recipe = RecurFormerRecipe(config)
    started = time.perf_counter()
    sources = training_sources(config.data, config.recurformer.student, progress=progress)
    result = Trainer(config, resume=resume, allow_config_change=allow_config_change, recipe=recipe,
                     sources=sources).fit()
    record = {"stage": config.recurformer.stage, "control": config.recurformer.control,
              "student": config.recurformer.student, "steps": result.steps, "tokens": result.tokens_seen,
              "heldout_loss": result.heldout_loss, "losses": result.losses,
              "seconds": round(time.perf_counter() - started, 1)}
    atomic_write_text(result.run_dir / "recurformer.json", json.dumps(record, indent=1) + "\n")
    return result
