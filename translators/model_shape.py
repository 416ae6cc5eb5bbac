"""The model's shape, read from its config.json in one place, and what tp/cp it can run on.

Every part of ds-tp that needs layers, heads, kv heads, head_dim or the vocabulary (plan's memory
estimate, validate's and train's divisibility checks, the dry run's sharding report, the ranks'
FLOPs and Ulysses sizing) builds a ModelShape through `ModelShape.from_config`, so head_dim has one
formula and multimodal wrappers (`text_config`) are unwrapped once. Pure: a dict in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ds_tp.errors import UserError

REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
# families whose MLP is two matrices (up, down) rather than the gated three (gate, up, down)
UNGATED_MLP = {"phi", "starcoder2", "gpt2", "gpt_bigcode", "gpt_neox", "gptj", "falcon", "bloom", "opt", "mpt"}


def text_config(config: dict) -> dict:
    """The language model's own config: multimodal wrappers keep it one level down."""
    if "hidden_size" not in config and isinstance(config.get("text_config"), dict):
        return config["text_config"]
    return config


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False
    qkv_bias: bool = False
    model_type: str = ""  # transformers' model_type: the family (translators/family_rules.py)
    experts: int = 0  # MoE: routed experts per layer (0: a dense MLP of `intermediate`)
    experts_per_token: int = 0
    expert_intermediate: int = 0
    shared_intermediate: int = 0  # MoE: an always-on shared expert's width (Qwen2-MoE, DeepSeek)

    @classmethod
    def from_config(cls, config: dict, source: str = "model config") -> "ModelShape":
        config = text_config(config)
        bad = [
            k
            for k in REQUIRED
            if not isinstance(config.get(k), int) or isinstance(config.get(k), bool) or config[k] < 1
        ]
        if bad:
            raise UserError(f"{source}: missing or not a positive integer: {', '.join(bad)}")
        heads = config["num_attention_heads"]
        experts = config.get("num_local_experts") or config.get("num_experts") or config.get("n_routed_experts") or 0
        expert_width = config.get("moe_intermediate_size") or (config["intermediate_size"] if experts else 0)
        shared = config.get("shared_expert_intermediate_size") or (config.get("n_shared_experts") or 0) * expert_width
        return cls(
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab=config["vocab_size"],
            tied=bool(config.get("tie_word_embeddings")),
            qkv_bias=bool(config.get("attention_bias")),
            model_type=str(config.get("model_type") or ""),
            experts=int(experts),
            experts_per_token=int(config.get("num_experts_per_tok") or 0) if experts else 0,
            expert_intermediate=int(expert_width),
            shared_intermediate=int(shared or 0),
        )

    @property
    def dense_mlp(self) -> int:
        """Width of the MLP every token runs through: the dense MLP, or an MoE layer's shared expert."""
        return self.shared_intermediate if self.experts else self.intermediate

    @property
    def layer_linear_params(self) -> int:
        """q, k, v, o and the gate/up/down MLP (an MoE layer's shared expert) of one decoder layer: what
        AutoTP splits. An MoE layer's routed experts are layer_expert_params (kept whole by TP)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        bias = (q + 2 * kv) if self.qkv_bias else 0
        return self.hidden * (2 * q + 2 * kv) + self.mlp_matrices * self.hidden * self.dense_mlp + bias

    @property
    def mlp_matrices(self) -> int:
        return 2 if self.model_type in UNGATED_MLP else 3

    @property
    def layer_expert_params(self) -> int:
        """An MoE layer's routed experts (gate, up, down each) and its router."""
        return self.experts * 3 * self.hidden * self.expert_intermediate + self.experts * self.hidden

    @property
    def active_mlp(self) -> int:
        """MLP width a token runs through: the dense MLP, or its experts plus the shared one."""
        return (
            self.experts_per_token * self.expert_intermediate + self.shared_intermediate
            if self.experts
            else self.intermediate
        )

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        head = 0 if self.tied else self.embedding_params
        layer = self.layer_linear_params + self.layer_expert_params + 2 * self.hidden
        return self.layers * layer + self.embedding_params + head + self.hidden

    @property
    def non_embedding_params(self) -> int:
        """N of the 6N FLOPs rule: everything but the input embedding and an untied output head; for an
        MoE model the parameters a token runs through (its experts_per_token experts, not all)."""
        inactive = (self.experts - self.experts_per_token) * 3 * self.hidden * self.expert_intermediate
        return self.params - self.embedding_params * (1 if self.tied else 2) - self.layers * inactive

    @property
    def active_params(self) -> int:
        """Parameters one token runs through (all of them for a dense model)."""
        return self.non_embedding_params + self.embedding_params * (1 if self.tied else 2)

    def params_per_tp_rank(self, tp: int) -> float:
        """AutoTP splits the layers' linears and the lm_head; embeddings, norms and routed experts stay whole."""
        head = 0 if self.tied else self.embedding_params / tp
        layer = self.layer_linear_params / tp + self.layer_expert_params + 2 * self.hidden
        return self.layers * layer + self.embedding_params + head + self.hidden

    def per_tp_rank_heads(self, tp: int) -> tuple[int, int]:
        """(attention heads, kv heads) one TP rank holds after AutoTP's split (kv heads at least 1)."""
        return self.heads // tp, max(1, self.kv_heads // tp)

    def layout_problems(self, tp: int, cp: int) -> list[tuple[str, str]]:
        """Why this model cannot be split tp x cp ways: (the layout key at fault, why), empty if it can.
        The one rule behind validate, train and plan's candidate layouts."""
        found = [
            ("tensor_parallel_size", f"the model's {name} ({value}) is not divisible by tensor_parallel_size {tp}")
            for name, value in (
                ("num_attention_heads", self.heads),
                ("num_key_value_heads", self.kv_heads),
                ("intermediate_size", self.intermediate),
                ("hidden_size", self.hidden),
            )
            if value % tp
        ]
        if tp > 1:
            from .family_rules import tp_problem  # the family's own rule (family_rules imports this module)

            why = tp_problem(self)
            if why:
                found.append(("tensor_parallel_size", why))
        if cp > 1:
            if self.heads % cp:
                found.append(
                    (
                        "context_parallel_size",
                        f"the model's num_attention_heads ({self.heads}) is not "
                        f"divisible by context_parallel_size {cp}",
                    )
                )
            if self.kv_heads % cp and cp % self.kv_heads:
                found.append(
                    (
                        "context_parallel_size",
                        f"num_key_value_heads ({self.kv_heads}) and "
                        f"context_parallel_size {cp}: neither divides the other",
                    )
                )
            if tp > 1 and (self.heads // tp) % cp:
                found.append(
                    (
                        "context_parallel_size",
                        f"heads per TP rank ({self.heads // tp}) not divisible by context_parallel_size {cp}",
                    )
                )
        return found


def embedding_rows(tokenizer_len: int, rows: int, to_32x: bool = False, shrink: bool = False) -> int:
    """The embedding rows the model trains with, as Axolotl decides: the tokenizer's length (rounded up to
    a multiple of 32 with resize_token_embeddings_to_32x); the model grows to it, and shrinks to it only
    with shrink_embeddings."""
    wanted = math.ceil(tokenizer_len / 32) * 32 if to_32x else tokenizer_len
    return wanted if wanted > rows or (wanted < rows and shrink) else rows
