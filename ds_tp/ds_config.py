"""Config -> the DeepSpeed JSON that runs: the pure translator plus the user's `deepspeed:` merge,
with its findings located in the YAML. Used by `translate` and by every rank at train time."""
from __future__ import annotations

from ds_tp.config import Config, to_problem
from ds_tp.errors import Problem, UserError
from ds_tp.translators.deepspeed import TrainFacts, Translation, merge_user_config, translate


def build_ds_config(cfg: Config, device: dict, facts: TrainFacts | None = None) -> tuple[Translation, list[Problem]]:
    """(translation, warnings). Raises UserError for what cannot be translated."""
    out = translate(cfg.values, cfg.layout, device, facts)
    if cfg.user_deepspeed:
        merge_user_config(out, cfg.user_deepspeed)
    problems = [to_problem(cfg.source, cfg.marks, f) for f in out.findings]
    errors = [p for p, f in zip(problems, out.findings) if f.level == "error"]
    if errors:
        raise UserError(errors)
    return out, [p for p, f in zip(problems, out.findings) if f.level != "error"]
