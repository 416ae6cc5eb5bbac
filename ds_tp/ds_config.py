"""Config -> the DeepSpeed JSON that runs: the pure translator plus the user's `deepspeed:` merge,
with its findings located in the YAML. Used by `translate` and by every rank at train time."""
from __future__ import annotations

from ds_tp.config import Config, to_problem
from ds_tp.errors import Problem, UserError
from ds_tp.translators.deepspeed import TrainFacts, Translation, merge_user_config, translate
from ds_tp.translators.model_shape import ModelShape
from ds_tp.translators.resolved import ResolvedRun, resolve_run


def resolve(cfg: Config, device: dict, model: ModelShape | None = None) -> ResolvedRun:
    """The run's decisions for this config on the ranks' device (translators/resolved.py)."""
    return resolve_run(cfg.values, cfg.layout, device, cfg.user_deepspeed, model)


def build_ds_config(cfg: Config, device: dict, facts: TrainFacts | None = None,
                    model: ModelShape | None = None) -> tuple[Translation, list[Problem]]:
    """(translation, warnings); translation.run holds the decisions. Raises UserError for what cannot
    be translated."""
    out = translate(cfg.values, resolve(cfg, device, model), facts)
    if cfg.user_deepspeed:
        merge_user_config(out, cfg.user_deepspeed)
    problems = [to_problem(cfg.source, cfg.marks, f) for f in out.findings]
    errors = [p for p, f in zip(problems, out.findings) if f.level == "error"]
    if errors:
        raise UserError(errors)
    return out, [p for p, f in zip(problems, out.findings) if f.level != "error"]
