"""The adapter, decided once: LoRA or QLoRA as Axolotl configures it (its peft LoraConfig and
bitsandbytes settings), or None for full fine-tuning. Pure: validate checks the keys, prepare fills in
the target modules from the model (lora_target_linear), every rank builds the peft model from it
(ds_tp.train.adapter), and plan counts its parameters.

Axolotl's meaning, kept here:
- adapter: lora | qlora; qlora needs load_in_4bit, lora may take load_in_8bit (or load_in_4bit).
- lora_target_modules: module names (a name or a dotted suffix), or one regex string matched against
  the whole module name (peft's rule); lora_target_linear adds every linear layer but the LM head.
- lora_dropout unset is 0.0; lora_r and lora_alpha have no default (peft could not build the layers).
- 4-bit: nf4, double quantization, compute in the training dtype, and quant storage in the weights'
  dtype so ZeRO-3 can partition the packed bytes like any other tensor (peft's DeepSpeed recipe);
  bnb_config_kwargs override any of them.
- new tokens (`tokens`, or a special token the tokenizer lacks) with an adapter need the embeddings
  and LM head in lora_modules_to_save, or the new rows would never train (Axolotl refuses it too).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ds_tp.errors import Finding

KINDS = ("lora", "qlora")
# the keys this module reads; without `adapter` Axolotl never reads them (old full fine-tuning configs
# often keep them): accepted with no effect
ADAPTER_KEYS = (
    "adapter",
    "lora_model_dir",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_target_linear",
    "lora_modules_to_save",
    "peft_use_dora",
    "peft_use_rslora",
    "peft_layers_to_transform",
    "peft_layers_pattern",
    "load_in_8bit",
    "load_in_4bit",
    "lora_fan_in_fan_out",
    "lora_rank_pattern",
    "lora_alpha_pattern",
    "peft_init_lora_weights",
    "peft_ensure_weight_tying",
    "peft_autocast_adapter_dtype",
    "bnb_config_kwargs",
)
# peft init_lora_weights values that need nothing beyond the weights of one module at init
INITS = (True, False, "gaussian")


@dataclass(frozen=True)
class Adapter:
    kind: str  # lora | qlora
    r: int
    alpha: float
    dropout: float = 0.0
    target_modules: list | str | None = None  # as configured (names, or one regex string)
    target_linear: bool = False
    modules_to_save: list | None = None
    fan_in_fan_out: bool = False
    rslora: bool = False
    dora: bool = False
    layers_to_transform: list | None = None
    layers_pattern: list | None = None
    rank_pattern: dict | None = None
    alpha_pattern: dict | None = None
    init_lora_weights: bool | str = True
    ensure_weight_tying: bool | None = None
    autocast_adapter_dtype: bool | None = None
    model_dir: str | None = None  # lora_model_dir: start from this saved adapter
    quant: str | None = None  # "4bit" | "8bit" | None: the frozen base's storage
    bnb_kwargs: dict = field(default_factory=dict)
    resolved_targets: list | None = None  # filled by prepare from the model (names peft will adapt)

    @property
    def scaling(self) -> float:
        """The default LoRA scale (rank_pattern/alpha_pattern may change it per module)."""
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    def describe(self) -> str:
        base = {"4bit": "4-bit (nf4) frozen base", "8bit": "8-bit frozen base", None: "frozen base"}[self.quant]
        targets = self.resolved_targets or self.target_modules or "every linear layer"
        extras = [x for x, on in (("rsLoRA", self.rslora), ("DoRA", self.dora)) if on]
        if self.modules_to_save:
            extras.append("fully trained: " + ", ".join(self.modules_to_save))
        return (
            f"{self.kind}: r {self.r}, alpha {self.alpha:g} (scale {self.scaling:g}), dropout {self.dropout:g} on "
            f"{targets}; {base}" + (f"; {'; '.join(extras)}" if extras else "")
        )

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_adapter(cfg: dict) -> tuple[Adapter | None, list[Finding]]:
    """The Adapter of a config (None: full fine-tuning) and what is wrong with its keys."""
    kind = cfg.get("adapter")
    quant = "4bit" if cfg.get("load_in_4bit") else "8bit" if cfg.get("load_in_8bit") else None
    if not kind:
        if quant:
            key = "load_in_4bit" if quant == "4bit" else "load_in_8bit"
            return None, [
                Finding(
                    (key,),
                    "a quantized base trains only through an adapter (as in Axolotl)",
                    "set adapter: qlora (4-bit) or lora, or turn it off to fine-tune every weight",
                )
            ]
        unread = [
            k for k in ADAPTER_KEYS if cfg.get(k) is not None and k not in ("adapter", "load_in_8bit", "load_in_4bit")
        ]
        return None, [
            Finding(
                (k,),
                "valid in Axolotl, no effect in ds-tp: read only with adapter: lora|qlora, "
                "which this config does not set (as in Axolotl)",
                level="ignored",
            )
            for k in unread
        ]
    findings: list[Finding] = []
    if kind not in KINDS:
        return None, [
            Finding(
                ("adapter",),
                f"adapter {kind!r} is not implemented by ds-tp",
                "use lora or qlora (llama-adapter, mixlora and plugin adapters are not built in)",
            )
        ]
    if kind == "qlora" and quant != "4bit":
        what = "load_in_8bit" if quant == "8bit" else "adapter"
        findings.append(
            Finding(
                (what,),
                "qlora trains on a 4-bit base: it needs load_in_4bit: true (as in Axolotl)",
                "set load_in_4bit: true, or use adapter: lora",
            )
        )
    if cfg.get("load_in_4bit") and cfg.get("load_in_8bit"):
        findings.append(Finding(("load_in_8bit",), "load_in_4bit and load_in_8bit are both set", "choose one"))
    for key in ("lora_r", "lora_alpha"):
        if cfg.get(key) is None:
            findings.append(
                Finding(
                    ("adapter",),
                    f"{key} is not set: Axolotl passes no default to peft, which cannot build the layers without it",
                    f"set {key} (e.g. 16)",
                )
            )
    targets = cfg.get("lora_target_modules")
    if not targets and not cfg.get("lora_target_linear") and not cfg.get("lora_target_parameters"):
        findings.append(
            Finding(
                ("adapter",),
                "no layer to adapt: lora_target_modules is empty and lora_target_linear is not set",
                "set lora_target_linear: true or list lora_target_modules (e.g. [q_proj, v_proj])",
            )
        )
    init = cfg.get("peft_init_lora_weights", True)
    if init not in INITS:
        findings.append(
            Finding(
                ("peft_init_lora_weights",),
                f"{init!r} is not implemented by ds-tp: it reads the "
                "whole base weights (or data) at init, which ZeRO-3 and quantized bases do not "
                "have on a rank",
                "true, false or gaussian",
            )
        )
    findings += _token_findings(cfg)
    if findings and any(f.level == "error" for f in findings):
        return None, findings
    adapter = Adapter(
        kind=kind,
        r=int(cfg["lora_r"]),
        alpha=float(cfg["lora_alpha"]),
        dropout=float(cfg.get("lora_dropout") or 0.0),
        target_modules=targets or None,
        target_linear=bool(cfg.get("lora_target_linear")),
        modules_to_save=list(cfg["lora_modules_to_save"]) if cfg.get("lora_modules_to_save") else None,
        fan_in_fan_out=bool(cfg.get("lora_fan_in_fan_out")),
        rslora=bool(cfg.get("peft_use_rslora")),
        dora=bool(cfg.get("peft_use_dora")),
        layers_to_transform=cfg.get("peft_layers_to_transform"),
        layers_pattern=cfg.get("peft_layers_pattern"),
        rank_pattern=cfg.get("lora_rank_pattern"),
        alpha_pattern=cfg.get("lora_alpha_pattern"),
        init_lora_weights=init,
        ensure_weight_tying=cfg.get("peft_ensure_weight_tying"),
        autocast_adapter_dtype=cfg.get("peft_autocast_adapter_dtype"),
        model_dir=cfg.get("lora_model_dir"),
        quant=quant,
        bnb_kwargs=dict(cfg.get("bnb_config_kwargs") or {}),
    )
    return adapter, findings


def _token_findings(cfg: dict) -> list[Finding]:
    """New token rows only train when the embeddings and the head train in full (lora_modules_to_save)."""
    saved = set(cfg.get("lora_modules_to_save") or [])
    if {"embed_tokens", "lm_head"} <= saved or not cfg.get("tokens"):
        return []
    return [
        Finding(
            ("tokens",),
            "new tokens with an adapter: their embedding rows would never train",
            "add lora_modules_to_save: [embed_tokens, lm_head] (Axolotl refuses this too)",
        )
    ]


def layout_findings(adapter: Adapter | None, tp: int) -> list[Finding]:
    """What an adapter cannot do on a layout."""
    if adapter is None or tp == 1:
        return []
    found = []
    if adapter.dora:
        found.append(
            Finding(
                ("peft_use_dora",),
                "DoRA normalises each adapted weight over its whole input row, "
                "which tensor parallelism splits across ranks",
                "use tensor_parallel_size 1 with DoRA",
            )
        )
    if adapter.quant:
        found.append(
            Finding(
                ("load_in_4bit" if adapter.quant == "4bit" else "load_in_8bit",),
                "AutoTP splits full-precision linear layers; a bitsandbytes-quantized base cannot be split",
                "use dp_shard_size (ZeRO-3) or context_parallel_size with a quantized base",
            )
        )
    if adapter.modules_to_save:
        found.append(
            Finding(
                ("lora_modules_to_save",),
                "fully trained copies of modules are not split by AutoTP",
                "use tensor_parallel_size 1 with lora_modules_to_save",
            )
        )
    return found


# Bytes per weight of a quantized frozen base (bitsandbytes): nf4 packs two weights a byte, and double
# quantization adds an 8-bit absmax per 64 weights plus a 32-bit constant per 256 of those; int8 keeps
# one byte a weight and a 32-bit scale per row (negligible).
QUANT_BYTES = {"4bit": 0.5 + 1 / 64 + 4 / (64 * 256), "8bit": 1.0}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ROW_PARALLEL = ("o_proj", "down_proj")


@dataclass(frozen=True)
class AdapterParams:
    """Parameters of one TP rank under an adapter: what trains, and the frozen base by storage."""

    trainable: float
    frozen_quantizable: float  # the decoder layers' linear weights (bitsandbytes-quantized under QLoRA)
    frozen_other: float  # embeddings, LM head, norms, MoE experts: kept in the training dtype
    assumed_targets: bool = False  # lora_target_modules was a regex: every linear layer counted


def adapter_params(adapter: Adapter, shape, tp: int) -> AdapterParams:
    """Per-TP-rank parameter counts of a Llama-style model (`shape`, a ModelShape) with this adapter:
    LoRA's A (r x in) and B (out x r) on each targeted linear of each adapted layer, split like the base
    (column layers split B, row layers split A), plus lora_modules_to_save's trained copies."""
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    h, inter = shape.hidden, shape.intermediate
    dims = {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    targets = adapter.resolved_targets or adapter.target_modules or []
    assumed = isinstance(targets, str)
    names = set(LINEARS) if adapter.target_linear or assumed else {t.rsplit(".", 1)[-1] for t in targets}
    layers = len(adapter.layers_to_transform) if adapter.layers_to_transform else shape.layers
    per_layer = 0.0
    for name in names & set(LINEARS):
        fan_in, fan_out = dims[name]
        lora_a, lora_b = adapter.r * fan_in, adapter.r * fan_out
        per_layer += lora_a / tp + lora_b if name in ROW_PARALLEL else lora_a + lora_b / tp
        if adapter.dora:
            per_layer += fan_out / (1 if name in ROW_PARALLEL else tp)
    saved = 0.0
    for name in adapter.modules_to_save or []:
        if name in ("embed_tokens", "lm_head"):
            saved += shape.embedding_params
    head = 0 if shape.tied else shape.embedding_params / tp
    return AdapterParams(
        trainable=layers * per_layer + saved,
        frozen_quantizable=shape.layers * shape.layer_linear_params / tp,
        # MoE routed experts are fused 3-D parameters in transformers 5 (not linear layers): bitsandbytes
        # leaves them in the training dtype, and TP keeps them whole
        frozen_other=shape.layers * (2 * h + shape.layer_expert_params) + shape.embedding_params + head + h,
        assumed_targets=assumed,
    )
