"""The learning-rate schedule, decided once: which schedule, how many warmup steps, and its options, as
Axolotl hands them to HF Trainer. Pure (validate and translate read it; no torch).

ds-tp drives the rate with these schedules on every layout (a torch scheduler handed to
deepspeed.initialize, built by ds_tp.train.schedule), not with DeepSpeed's Warmup* classes, whose
warm-up is one step off transformers' and which have no constant-without-warmup, restarts, polynomial
or Axolotl's own shapes.

- transformers' schedules (`get_scheduler`): linear, cosine, cosine_with_restarts, polynomial, constant
  (no warmup, as HF: warmup steps are ignored), constant_with_warmup, inverse_sqrt, cosine_with_min_lr,
  cosine_warmup_with_min_lr, warmup_stable_decay; lr_scheduler_kwargs go to them as
  scheduler_specific_kwargs.
- Axolotl's own, as Axolotl selects them: cosine + cosine_min_lr_ratio (cosine to a floor),
  + cosine_constant_lr_ratio (then held at the floor), cosine + lr_quadratic_warmup, rex.
- one_cycle: torch's OneCycleLR, as Axolotl builds it (pct_start = warmup / total, cosine annealing).
- reduce_lr_on_plateau, greedy: transformers' metric-driven schedulers, stepped with eval_loss after each
  evaluation (as HF Trainer steps them), never after an optimizer step; they need an eval split.

Whether lr_scheduler_kwargs fit the chosen schedule is checked before launch by building the scheduler
once on a dummy optimizer (ds_tp.train.schedule.check_schedule), so transformers' own messages reach
the user at their key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ds_tp.errors import Finding

HF_SCHEDULES = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)
AXOLOTL_SCHEDULES = ("rex", "one_cycle")
METRIC_SCHEDULES = ("reduce_lr_on_plateau", "greedy")  # stepped with eval_loss after each evaluation
SUPPORTED = ", ".join((*HF_SCHEDULES, *METRIC_SCHEDULES, *AXOLOTL_SCHEDULES))


@dataclass(frozen=True)
class Schedule:
    """What drives the rate. `kind` says who defines the shape: "hf" (transformers.get_scheduler with
    `name`), "metric" (transformers' reduce_lr_on_plateau / greedy, stepped with eval_loss), "cosine_min_lr", "cosine_constant", "cosine_quadratic", "rex" (Axolotl's, computed by
    lr_factor here), "one_cycle" (torch's OneCycleLR)."""

    kind: str
    name: str
    warmup: int | None  # None until the total step count is known (warmup_ratio, Axolotl's default)
    total: int | None
    kwargs: dict = field(default_factory=dict)
    min_lr_ratio: float = 0.0
    constant_lr_ratio: float = 0.0

    def describe(self) -> str:
        extra = ""
        if self.kind in ("cosine_min_lr", "cosine_constant", "rex") and self.min_lr_ratio:
            extra += f", floor {self.min_lr_ratio} x lr"
        if self.kind == "cosine_constant":
            extra += f", held from {self.constant_lr_ratio} of the steps"
        if self.kwargs:
            extra += ", " + ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        if self.kind == "metric":
            return f"{self.name} (transformers'), stepped with eval_loss after each evaluation{extra}"
        who = "transformers" if self.kind == "hf" else ("torch OneCycleLR" if self.kind == "one_cycle" else "Axolotl")
        if self.name == "constant":
            warm = "no warm-up (HF's constant ignores warmup_steps; constant_with_warmup uses them)"
        elif self.warmup is None:
            warm = "warmup from the step count"
        else:
            warm = f"{self.warmup} warmup steps"
        return f"{self.name} ({who}'s shape), {warm}{extra}"


def warmup_steps(cfg: dict, total: int | None) -> int | None:
    """Axolotl's rule: warmup_steps as given; else floor(warmup_ratio x total); else min(3% of total, 100)
    (a default warm-up when neither is set); a single warmup step becomes 2. None while total is unknown."""
    if cfg.get("warmup_steps") is not None:
        warm = int(cfg["warmup_steps"])
    elif not total:
        return None
    elif cfg.get("warmup_ratio") is not None:
        warm = max(int(float(cfg["warmup_ratio"]) * total), 0)
    else:
        warm = min(int(0.03 * total), 100)
    return 2 if warm == 1 else warm


def resolve_schedule(cfg: dict, total: int | None) -> tuple[Schedule | None, list[Finding]]:
    name = cfg.get("lr_scheduler") or "cosine"
    if name not in HF_SCHEDULES and name not in AXOLOTL_SCHEDULES and name not in METRIC_SCHEDULES:
        return None, [
            Finding(("lr_scheduler",), f"lr_scheduler {name!r} is not implemented by ds-tp", "use one of: " + SUPPORTED)
        ]
    kwargs = dict(cfg.get("lr_scheduler_kwargs") or {})
    warm = warmup_steps(cfg, total)
    min_ratio = cfg.get("cosine_min_lr_ratio")
    constant_ratio = cfg.get("cosine_constant_lr_ratio")
    findings = []
    kind = "hf"
    if name in METRIC_SCHEDULES:
        kind = "metric"
        if not has_eval_split(cfg):
            findings.append(
                Finding(
                    ("lr_scheduler",),
                    f"{name} lowers the rate when eval_loss stops improving, and this config has no eval split",
                    "set val_set_size or test_datasets",
                )
            )
    elif name == "rex":
        kind = "rex"
    elif name == "one_cycle":
        kind = "one_cycle"
    elif name == "cosine" and cfg.get("lr_quadratic_warmup"):
        kind = "cosine_quadratic"
        if min_ratio is not None:
            findings.append(
                Finding(
                    ("lr_quadratic_warmup",),
                    "with cosine_min_lr_ratio: the quadratic warm-up wins and the rate decays to 0, as in Axolotl",
                    level="warning",
                )
            )
    elif name == "cosine" and min_ratio and constant_ratio:
        kind = "cosine_constant"
    elif name == "cosine" and min_ratio:
        kind = "cosine_min_lr"
    for key, value in (("cosine_min_lr_ratio", min_ratio), ("cosine_constant_lr_ratio", constant_ratio)):
        if value is not None and not 0 <= float(value) <= 1:
            findings.append(Finding((key,), f"{value} is outside 0..1", "a fraction of the peak rate / of the steps"))
    if constant_ratio and kind != "cosine_constant":
        findings.append(
            Finding(
                ("cosine_constant_lr_ratio",),
                "has no effect without lr_scheduler: cosine and cosine_min_lr_ratio (as in Axolotl)",
                level="warning",
            )
        )
    if kwargs and kind not in ("hf", "one_cycle", "metric"):
        findings.append(Finding(("lr_scheduler_kwargs",), f"not used by Axolotl's {kind} schedule", level="warning"))
    schedule = Schedule(kind, name, warm, total, kwargs, float(min_ratio or 0.0), float(constant_ratio or 0.0))
    return schedule, findings


def has_eval_split(cfg: dict) -> bool:
    return bool(cfg.get("val_set_size")) or bool(cfg.get("test_datasets"))


def lr_factor(schedule: Schedule, step: int) -> float:
    """The rate of optimizer step `step` (0 = the first) as a fraction of the peak, for Axolotl's own
    shapes (the kinds other than hf and one_cycle), as Axolotl defines them."""
    warm, total = schedule.warmup or 0, schedule.total or 0
    floor = schedule.min_lr_ratio
    if schedule.kind == "rex":
        # Axolotl's RexLR counts from 1: the first step already runs at 1/warmup of the peak
        at = step + 1
        if 1 <= at <= warm:
            return at / warm
        after, remaining = at - warm, total - warm
        if after >= remaining or remaining <= 0:
            return floor
        z = (remaining - after % remaining) / remaining
        return floor + (1.0 - floor) * (z / (0.1 + 0.9 * z))
    if step < warm:
        ramp = step / max(1, warm)
        return ramp**2 if schedule.kind == "cosine_quadratic" else ramp
    if schedule.kind == "cosine_quadratic":
        progress = (step - warm) / max(1, total - warm)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    if schedule.kind == "cosine_min_lr":
        progress = (step - warm) / max(1, total - warm)
        return (1 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)) + floor
    if schedule.kind == "cosine_constant":
        held = int(total * schedule.constant_lr_ratio)
        progress = (min(step, held) - warm) / max(1, held - warm)
        return max(0.0, (1 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))) + floor
    raise ValueError(f"lr_factor does not compute {schedule.kind} schedules")
