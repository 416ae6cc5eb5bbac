"""Preference tuning (Axolotl's `rl:`): which loss, with which hyperparameters, against which reference.

Decided once here, from the config alone (pure: no torch, no files), and carried in ResolvedRun.preference;
validate reports the findings, the ranks read the decision. Axolotl hands these keys to TRL's trainers
(axolotl/core/builders/rl.py); the defaults are TRL's:

- dpo, ipo ... DPOTrainer's loss (ipo: loss_type ipo)
- orpo ....... ORPOTrainer's loss; no reference
- simpo ...... CPOTrainer's loss with loss_type simpo (simpo_gamma 0.5, cpo_alpha 1.0); no reference
- kto ........ KTOTrainer's loss (desirable/undesirable weights 1.0), unpaired rows with a label
- grpo, gdpo, ebft: refused (they generate completions while training)

beta, for every method, is Axolotl's order: trl.beta, else rl_beta, else orpo_alpha, else TRL's 0.1.

The reference (the model the policy is regularised towards) for dpo/ipo/kto:
- "precomputed": precompute_ref_log_probs; its log-probs computed once with the starting weights
- "adapter-disabled": LoRA/QLoRA; the same base with the adapter switched off, no second copy
- "frozen-copy": full fine-tuning; a second copy of the starting model, laid out like the policy
  (ZeRO-3-partitioned when the policy is), never stepped, holding no optimizer state
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ds_tp.errors import Finding

METHODS = ("dpo", "ipo", "orpo", "simpo", "kto")
ONLINE = {
    "grpo": "GRPO generates completions during training (online RL)",
    "gdpo": "GDPO generates completions during training (online RL)",
    "ebft": "EBFT generates completions during training",
}
DPO_LOSSES = (
    "sigmoid",
    "hinge",
    "ipo",
    "robust",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
)  # TRL 1.16's per-pair ones (aot/sft: not per pair)
SMOOTHED = ("robust", "exo_pair")  # the DPO losses that read label_smoothing (TRL 1.16)
TRAINER = {"dpo": "DPOTrainer", "ipo": "DPOTrainer", "orpo": "ORPOTrainer", "simpo": "CPOTrainer", "kto": "KTOTrainer"}
# keys that only mean something with rl: set (said once when rl is unset)
RL_KEYS = (
    "rl_beta",
    "dpo_label_smoothing",
    "precompute_ref_log_probs",
    "dpo_loss_type",
    "dpo_loss_weights",
    "orpo_alpha",
    "simpo_gamma",
    "cpo_alpha",
    "kto_desirable_weight",
    "kto_undesirable_weight",
    "dpo_use_weighting",
    "dpo_ld_alpha",
)
DPO_ONLY = ("dpo_use_weighting", "dpo_ld_alpha")  # Axolotl hands these to DPOConfig for rl: dpo and ipo only


@dataclass(frozen=True)
class Preference:
    method: str  # dpo | ipo | orpo | simpo | kto
    beta: float
    loss_types: tuple[str, ...] = ("sigmoid",)  # dpo/ipo: TRL's DPO loss types
    loss_weights: tuple[float, ...] = (1.0,)
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    cpo_alpha: float = 1.0
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    use_weighting: bool = False  # dpo_use_weighting: WPO's per-pair weights from the policy's own probabilities
    ld_alpha: float | None = None  # dpo_ld_alpha: LD-DPO's weight on answer tokens past the pair's shorter answer
    reference: str = "none"  # none | precomputed | adapter-disabled | frozen-copy
    reference_why: str = ""

    @property
    def paired(self) -> bool:
        """Rows are (prompt, chosen, rejected) pairs; KTO's are single completions with a label."""
        return self.method != "kto"

    @property
    def needs_reference(self) -> bool:
        return self.reference != "none"

    @property
    def trainer(self) -> str:
        return TRAINER[self.method]

    def describe(self) -> str:
        extra = {
            "dpo": f"loss {'+'.join(self.loss_types)}, label_smoothing {self.label_smoothing}",
            "ipo": "loss ipo",
            "orpo": "odds-ratio + NLL",
            "simpo": f"gamma {self.simpo_gamma}, cpo_alpha {self.cpo_alpha}",
            "kto": f"weights desirable {self.desirable_weight} / undesirable {self.undesirable_weight}",
        }[self.method]
        return f"rl: {self.method} (TRL's {self.trainer} loss), beta {self.beta}, {extra}; reference: {self.reference}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "Preference | None":
        if not data:
            return None
        data = dict(data)
        data["loss_types"] = tuple(data.get("loss_types", ("sigmoid",)))
        data["loss_weights"] = tuple(data.get("loss_weights", (1.0,)))
        return cls(**data)


def _beta(cfg: dict) -> tuple[float, str]:
    """(beta, the key it came from): Axolotl's order for every method (core/builders/rl.py)."""
    trl: dict = cfg["trl"] if isinstance(cfg.get("trl"), dict) else {}
    for key, value in (
        ("trl.beta", trl.get("beta")),
        ("rl_beta", cfg.get("rl_beta")),
        ("orpo_alpha", cfg.get("orpo_alpha")),
    ):
        if value is not None:
            return float(value), key
    return 0.1, ""


def _reference(cfg: dict, method: str) -> tuple[str, str]:
    if method in ("orpo", "simpo"):
        return "none", f"{method} needs no reference model"
    if cfg.get("precompute_ref_log_probs"):
        return "precomputed", "precompute_ref_log_probs: computed once before the first step, cached with the data"
    if cfg.get("adapter"):
        return "adapter-disabled", "the base model with the adapter disabled (no second copy)"
    return "frozen-copy", (
        "full fine-tuning: a frozen copy of the starting model, laid out like the policy "
        "(precompute_ref_log_probs: true avoids holding it)"
    )


def resolve_preference(cfg: dict) -> tuple[Preference | None, list[Finding]]:
    """The decision for cfg's rl:, and what validate says about it (errors at the key at fault)."""
    method = cfg.get("rl")
    findings: list[Finding] = []
    if not method:
        for key in RL_KEYS:
            if cfg.get(key) is not None:
                findings.append(
                    Finding(
                        (key,), "has no effect without rl:", "set rl: dpo (or ipo, orpo, simpo, kto)", level="warning"
                    )
                )
        return None, findings
    if method in ONLINE:
        findings.append(
            Finding(
                ("rl",),
                f"{method}: {ONLINE[method]}, which ds-tp does not do",
                "offline preference methods: " + ", ".join(METHODS),
            )
        )
        return None, findings
    if method not in METHODS:
        return None, findings  # the schema's enum reports it
    findings += _method_findings(cfg, method)
    loss_types: tuple[str, ...] = ("ipo",) if method == "ipo" else ("sigmoid",)
    weights: tuple[float, ...] = (1.0,)
    if method == "dpo" and cfg.get("dpo_loss_type"):
        loss_types = tuple(cfg["dpo_loss_type"])
        unknown = [t for t in loss_types if t not in DPO_LOSSES]
        if unknown:
            findings.append(
                Finding(
                    ("dpo_loss_type",),
                    f"{', '.join(map(repr, unknown))}: not a DPO loss ds-tp has",
                    "one or more of: " + ", ".join(DPO_LOSSES),
                )
            )
        weights = tuple(float(w) for w in (cfg.get("dpo_loss_weights") or [1.0] * len(loss_types)))
        if len(weights) != len(loss_types):
            findings.append(
                Finding(
                    ("dpo_loss_weights",),
                    f"{len(weights)} weights for {len(loss_types)} loss types",
                    "one weight per dpo_loss_type entry",
                )
            )
    if method == "dpo" and cfg.get("dpo_label_smoothing") and not set(loss_types) & set(SMOOTHED):
        findings.append(
            Finding(
                ("dpo_label_smoothing",),
                f"no effect on the {'+'.join(loss_types)} loss: TRL 1.16 "
                "(Axolotl 0.21's) reads it only in the robust and exo_pair losses",
                "set dpo_loss_type: [robust] for robust DPO",
                level="warning",
            )
        )
    if "exo_pair" in loss_types and not cfg.get("dpo_label_smoothing"):
        findings.append(
            Finding(
                ("dpo_loss_type",),
                "exo_pair needs dpo_label_smoothing > 0",
                "set dpo_label_smoothing: 0.001 (the EXO paper's value)",
            )
        )
    if cfg.get("precompute_ref_log_probs") and method in ("orpo", "simpo"):
        findings.append(
            Finding(("precompute_ref_log_probs",), f"{method} has no reference model: no effect", level="warning")
        )
    trl: dict = cfg["trl"] if isinstance(cfg.get("trl"), dict) else {}
    for key in sorted(set(trl) - {"beta"}):
        findings.append(Finding(("trl", key), f"GRPO's setting: no effect with rl: {method}", level="warning"))
    if cfg.get("chunked_cross_entropy"):
        findings.append(
            Finding(
                ("chunked_cross_entropy",),
                f"no effect with rl: {method}: the preference losses "
                "read each sequence's log-probs from the full logits",
                level="warning",
            )
        )
    micro = cfg.get("micro_batch_size")
    if method == "kto" and isinstance(micro, int) and micro < 2:
        findings.append(
            Finding(
                ("micro_batch_size",),
                "rl: kto needs at least 2: the KL term pairs each prompt "
                "with another row's completion from the same micro-batch (TRL refuses 1 too)",
                "micro_batch_size: 2 or more",
            )
        )
    if cfg.get("sample_packing"):
        findings.append(
            Finding(("sample_packing",), "preference pairs are not packed (as in Axolotl): turned off", level="notice")
        )
    reference, why = _reference(cfg, method)
    beta, beta_key = _beta(cfg)
    if beta_key == "orpo_alpha" and method != "orpo":
        findings.append(
            Finding(
                ("orpo_alpha",),
                f"is beta ({beta}) with rl: {method}, as in Axolotl (trl.beta and rl_beta are unset)",
                "set rl_beta to say so",
                level="warning",
            )
        )
    preference = Preference(
        method=method,
        beta=beta,
        loss_types=loss_types,
        loss_weights=weights,
        label_smoothing=float(cfg.get("dpo_label_smoothing") or 0.0) if method == "dpo" else 0.0,
        simpo_gamma=float(cfg["simpo_gamma"]) if cfg.get("simpo_gamma") is not None else 0.5,
        cpo_alpha=float(cfg["cpo_alpha"]) if cfg.get("cpo_alpha") is not None else 1.0,
        desirable_weight=float(cfg.get("kto_desirable_weight") or 1.0),
        undesirable_weight=float(cfg.get("kto_undesirable_weight") or 1.0),
        use_weighting=bool(cfg.get("dpo_use_weighting")) and method in ("dpo", "ipo"),
        ld_alpha=float(cfg["dpo_ld_alpha"])
        if cfg.get("dpo_ld_alpha") is not None and method in ("dpo", "ipo")
        else None,
        reference=reference,
        reference_why=why,
    )
    return preference, findings


def _method_findings(cfg: dict, method: str) -> list[Finding]:
    """Keys a method never reads (a warning, as Axolotl passes them on for dpo and ipo only), and key
    combinations Axolotl refuses."""
    findings = []
    for key in DPO_ONLY:
        value = cfg.get(key)
        if value is None or value is False:  # dpo_ld_alpha: 0 is a setting (Axolotl passes any value but None)
            continue
        if method not in ("dpo", "ipo"):
            findings.append(
                Finding(
                    (key,), f"has no effect with rl: {method}: Axolotl reads it for dpo and ipo only", level="warning"
                )
            )
    if method == "dpo" and cfg.get("dpo_loss_weights") and not cfg.get("dpo_loss_type"):
        findings.append(
            Finding(
                ("dpo_loss_weights",),
                "weights without dpo_loss_type (Axolotl refuses this too)",
                "set dpo_loss_type: one loss type per weight",
            )
        )
    for key in ("dpo_loss_type", "dpo_loss_weights", "dpo_label_smoothing"):
        if method != "dpo" and cfg.get(key):
            why = "rl: ipo is always the ipo loss" if key != "dpo_label_smoothing" and method == "ipo" else ""
            why = why or "Axolotl reads it for rl: dpo only"
            findings.append(Finding((key,), f"has no effect with rl: {method}: {why}", level="warning"))
    return findings
