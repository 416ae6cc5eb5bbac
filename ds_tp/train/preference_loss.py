"""Preference-tuning losses (rl: dpo | ipo | orpo | kto | simpo) in plain torch, from per-sequence
log-probabilities. Each follows the TRL 1.16.0 trainer that Axolotl 0.21.0 builds for that `rl:` value
(DPOTrainer._compute_loss, ORPOTrainer, CPOTrainer with loss_type "simpo", KTOTrainer._compute_loss), so a
YAML optimises here what it optimises under Axolotl; tests/unit/test_preference_loss.py holds each to TRL's
own code. Every loss returns a PreferenceOutput; `metric_sums` turns one micro-batch into sums and counts of
TRL's logged metrics, which ranks all-reduce (SUM) before `metrics_from_sums`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ds_tp.labels import IGNORE

Tensor = torch.Tensor


@dataclass
class PreferenceOutput:
    """losses: per-example terms whose mean is the preference part of the loss (KTO: chosen rows, then rejected);
    loss: the micro-batch's whole objective as TRL computes it (with any NLL term); rewards and logps: detached,
    what TRL logs as rewards/* and logps/*."""

    losses: Tensor
    loss: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    chosen_logps: Tensor
    rejected_logps: Tensor
    paired: bool = True
    nll_sum: Tensor | None = None  # ORPO/SimPO: the micro-batch's summed chosen-token NLL and its token count
    nll_tokens: Tensor | None = None
    kl: Tensor | None = None  # KTO: the clamped KL estimate used
    logs: dict[str, Tensor] = field(default_factory=dict)  # per-example extras, logged as means over pairs

    def metric_sums(self) -> dict[str, Tensor]:
        return metric_sums(self)


def _out(losses: Tensor, loss: Tensor, beta: float, cr: Tensor, rr: Tensor, c: Tensor, r: Tensor, **kw):
    return PreferenceOutput(losses, loss, beta * cr.detach(), beta * rr.detach(), c.detach(), r.detach(), **kw)


def _token_logps(logits: Tensor, shift_labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    logits, mask = logits.float(), shift_labels != IGNORE
    lse = torch.logsumexp(logits, dim=-1)
    return logits.gather(-1, shift_labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1) - lse, lse, mask


def sequence_logps(
    logits: Tensor, shift_labels: Tensor, *, shared_len: Tensor | None = None, ld_alpha: float | None = None
) -> tuple[Tensor, Tensor]:
    """(sum of log p(label), number of labels) per row over positions whose label is not -100, in fp32; logits
    (B, T, V) at t predict shift_labels[:, t]. TRL's DPO and KTO sum their fused head's per-token log-probs; ORPO's
    and CPO's get_batch_logps divide that sum by the count (average_log_prob), so those losses take both. LD-DPO
    (dpo_ld_alpha): labels after a row's first `shared_len` (min of its pair's counts) are weighted by ld_alpha."""
    lp, _, mask = _token_logps(logits, shift_labels)
    lp = torch.where(mask, lp, torch.zeros_like(lp))
    if ld_alpha is not None:
        lp = torch.where(mask.cumsum(dim=-1) > shared_len.to(lp.device).unsqueeze(-1), lp * ld_alpha, lp)
    return lp.sum(dim=-1), mask.sum(dim=-1).float()


def wpo_logps(logits: Tensor, shift_labels: Tensor) -> Tensor:
    """Per-row sum over labels of log p(label) - log sum_v p_v^2, without grad, from the policy's logits: TRL DPO's
    use_weighting (WPO eq. 2) input. It needs each position's whole distribution, so sums alone cannot give it."""
    with torch.no_grad():
        lp, lse, mask = _token_logps(logits, shift_labels)
        lp = lp - (torch.logsumexp(2 * logits.float(), dim=-1) - 2 * lse)
        return torch.where(mask, lp, torch.zeros_like(lp)).sum(dim=-1)


# Per-example term of each TRL DPO loss_type, from v: log-ratios cr, rr; z = beta * (cr - rr); nd = cr/n_c - rr/n_r.
_DPO_TERMS = {
    "sigmoid": lambda v: -F.logsigmoid(v.z),  # TRL 1.16 applies no label smoothing here
    "hinge": lambda v: torch.relu(1 - v.z),
    "ipo": lambda v: (v.nd - 1 / (2 * v.b)) ** 2,
    "robust": lambda v: (-(1 - v.ls) * F.logsigmoid(v.z) + v.ls * F.logsigmoid(-v.z)) / (1 - 2 * v.ls),
    "exo_pair": lambda v: (
        torch.sigmoid(v.z) * (F.logsigmoid(v.z) - math.log1p(-v.ls))
        + torch.sigmoid(-v.z) * (F.logsigmoid(-v.z) - math.log(v.ls))
    ),
    "nca_pair": lambda v: -F.logsigmoid(v.b * v.cr) - 0.5 * F.logsigmoid(-v.b * v.cr) - 0.5 * F.logsigmoid(-v.b * v.rr),
    "bco_pair": lambda v: -F.logsigmoid(v.b * v.cr) - F.logsigmoid(-v.b * v.rr),
    "sppo_hard": lambda v: (v.cr - 0.5 / v.b) ** 2 + (v.rr + 0.5 / v.b) ** 2,
    "apo_zero": lambda v: 1 - torch.sigmoid(v.b * v.cr) + torch.sigmoid(v.b * v.rr),
    "apo_down": lambda v: torch.sigmoid(v.b * v.cr) + 1 - torch.sigmoid(v.z),
    "discopop": lambda v: (
        -F.logsigmoid(v.z) * (1 - torch.sigmoid(v.z / v.tau)) + torch.exp(-v.z) * torch.sigmoid(v.z / v.tau)
    ),
    "sigmoid_norm": lambda v: -F.logsigmoid(v.b * v.nd),
}
DPO_LOSS_TYPES = tuple(_DPO_TERMS)


def dpo_losses(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    loss_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    chosen_counts: Tensor | None = None,
    rejected_counts: Tensor | None = None,
    chosen_wpo: Tensor | None = None,
    rejected_wpo: Tensor | None = None,
    discopop_tau: float = 0.05,
) -> PreferenceOutput:
    """TRL DPOTrainer._compute_loss (f_divergence_type reverse_kl) from summed logps: per example, the weighted sum of
    each loss type's term, times exp(wpo/count) of chosen and of rejected when chosen_wpo/rejected_wpo are given.
    ipo and sigmoid_norm divide the log-ratios by the completion counts (TRL counts completion_mask before the
    shift: the same unless a completion starts at position 0). label_smoothing is read by robust and exo_pair only,
    as in TRL 1.16. Every term is per example, so a mean over pairs on any ranks is well defined."""
    kinds = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    weights = list(loss_weights) if loss_weights is not None else [1.0] * len(kinds)
    if not kinds or any(k not in _DPO_TERMS for k in kinds):
        raise ValueError(f"unsupported DPO loss_type {kinds}; supported: {', '.join(DPO_LOSS_TYPES)}")
    if len(weights) != len(kinds):
        raise ValueError(f"loss_weights has {len(weights)} entries for {len(kinds)} loss types")
    if "exo_pair" in kinds and label_smoothing == 0.0:
        raise ValueError("exo_pair needs label_smoothing > 0 (the EXO paper recommends 1e-3)")
    cr, rr = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    v = SimpleNamespace(cr=cr, rr=rr, z=beta * (cr - rr), b=beta, ls=label_smoothing, tau=discopop_tau, nd=None)
    if {"ipo", "sigmoid_norm"} & set(kinds):
        if chosen_counts is None or rejected_counts is None:
            raise ValueError("ipo and sigmoid_norm need chosen_counts and rejected_counts")
        v.nd = cr / chosen_counts.clamp(min=1.0) - rr / rejected_counts.clamp(min=1.0)
    losses = sum(w * _DPO_TERMS[k](v) for k, w in zip(kinds, weights))
    wpo = ((chosen_wpo, chosen_counts), (rejected_wpo, rejected_counts))
    if chosen_wpo is not None or rejected_wpo is not None:
        if any(x is None for pair in wpo for x in pair):
            raise ValueError("WPO weighting needs chosen_wpo, rejected_wpo, chosen_counts and rejected_counts")
        cw, rw = (torch.exp(x / n.clamp(min=1)) for x, n in wpo)
        losses = losses * (cw * rw)
    return _out(losses, losses.mean(), beta, cr, rr, chosen_logps, rejected_logps)


def _nll(nll_sum: Tensor, nll_count: Tensor, nll_tokens: Tensor | float | None) -> tuple[Tensor, Tensor, Tensor]:
    total = nll_sum.float().sum()
    tokens = nll_count.float().sum() if nll_tokens is None else torch.as_tensor(nll_tokens, device=total.device).float()
    return total / tokens, total.detach(), tokens.detach()


def orpo_losses(
    chosen_logps: Tensor,
    chosen_counts: Tensor,
    rejected_logps: Tensor,
    rejected_counts: Tensor,
    chosen_nll_sum: Tensor,
    chosen_nll_count: Tensor,
    *,
    beta: float = 0.1,
    nll_tokens: Tensor | float | None = None,
) -> PreferenceOutput:
    """TRL ORPOTrainer: loss = NLL - mean(beta * logsigmoid(log_odds)), the log-odds from each completion's mean
    token log-prob (sum/count); beta is Axolotl's orpo_alpha. TRL's NLL is CrossEntropyLoss over the micro-batch's
    chosen rows: a token mean over ALL non-padding tokens of the chosen sequences (prompt and completion; labels =
    input_ids where attention_mask is 1), not a mean of per-example means. Give per example chosen_nll_sum (minus
    sequence_logps' sum on those labels) and chosen_nll_count; the denominator is this micro-batch's token count
    (TRL), or nll_tokens (e.g. all-reduced across ranks) when given."""
    pc, pr = chosen_logps.float() / chosen_counts, rejected_logps.float() / rejected_counts
    log1mexp = [torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x))) for x in (pc, pr)]
    log_odds = (pc - pr) - (log1mexp[0] - log1mexp[1])
    ratio = F.logsigmoid(log_odds)
    losses = -beta * ratio
    nll, nll_sum, tokens = _nll(chosen_nll_sum, chosen_nll_count, nll_tokens)
    logs = {"log_odds_ratio": ratio.detach(), "log_odds_chosen": log_odds.detach()}
    return _out(losses, nll + losses.mean(), beta, pc, pr, pc, pr, nll_sum=nll_sum, nll_tokens=tokens, logs=logs)


def simpo_losses(
    chosen_logps: Tensor,
    chosen_counts: Tensor,
    rejected_logps: Tensor,
    rejected_counts: Tensor,
    *,
    beta: float = 0.1,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
    cpo_alpha: float = 1.0,
    nll_tokens: Tensor | float | None = None,
) -> PreferenceOutput:
    """TRL CPOTrainer, loss_type "simpo", alpha 0: z = beta * (mean logp chosen - mean logp rejected) - gamma, loss =
    mean(-(1-ls) logsigmoid(z) - ls logsigmoid(-z)) + cpo_alpha * NLL. TRL's NLL is CrossEntropyLoss over the chosen
    completion labels of the micro-batch: -sum(chosen_logps) / sum(chosen_counts) (or / nll_tokens); 0 when
    cpo_alpha is 0. cpo_alpha: CPOConfig's default 1.0 unless Axolotl's cpo_alpha is set; gamma: simpo_gamma
    (CPOConfig default 0.5; Axolotl passes None when it is unset, which TRL cannot run)."""
    pc, pr = chosen_logps.float() / chosen_counts, rejected_logps.float() / rejected_counts
    z = beta * ((pc - pr) - gamma / beta)
    losses = -F.logsigmoid(z) * (1 - label_smoothing) - F.logsigmoid(-z) * label_smoothing
    loss, nll_sum, tokens = losses.mean(), torch.zeros(()), torch.zeros(())
    if cpo_alpha != 0:
        nll, nll_sum, tokens = _nll(-chosen_logps, chosen_counts, nll_tokens)
        loss = loss + cpo_alpha * nll
    return _out(losses, loss, beta, pc, pr, pc, pr, nll_sum=nll_sum, nll_tokens=tokens)


def kto_kl_local(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """This rank's mean log-ratio of the mismatched (KL) completions, detached. TRL gathers every process's mean,
    averages them and clamps at 0: all-reduce this with AVG and pass it as kto_losses(kl=...)."""
    return (policy_kl_logps - ref_kl_logps).mean().detach()


def kto_losses(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    policy_kl_logps: Tensor | None,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    ref_kl_logps: Tensor | None,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    kl: Tensor | float | None = None,
    loss_type: str = "kto",
) -> PreferenceOutput:
    """TRL KTOTrainer._compute_loss from summed logps: chosen desirable_weight * (1 - sigmoid(beta (r_c - kl))),
    rejected undesirable_weight * (1 - sigmoid(beta (kl - r_r))), loss = nanmean over the micro-batch. kl is
    detached and clamped at 0 here; pass it averaged across ranks (kto_kl_local), else this batch's own mean is
    used (TRL on one process) and the KL logps are needed. apo_zero_unpaired has no KL term."""
    if loss_type not in ("kto", "apo_zero_unpaired"):
        raise ValueError(f"unsupported KTO loss_type {loss_type!r}; supported: kto, apo_zero_unpaired")
    if loss_type == "apo_zero_unpaired":
        kl = torch.zeros(())
    elif kl is None:
        kl = kto_kl_local(policy_kl_logps, ref_kl_logps)
    kl = torch.as_tensor(kl, device=policy_chosen_logps.device).detach().clamp(min=0)
    cr, rr = policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps
    if loss_type == "kto":
        chosen, rejected = 1 - torch.sigmoid(beta * (cr - kl)), 1 - torch.sigmoid(beta * (kl - rr))
    else:
        chosen, rejected = 1 - torch.sigmoid(beta * cr), torch.sigmoid(beta * rr)
    losses = torch.cat((desirable_weight * chosen, undesirable_weight * rejected))
    logged = (policy_chosen_logps, policy_rejected_logps)
    return _out(losses, losses.nanmean(), beta, cr, rr, *logged, paired=False, kl=kl)


def metric_sums(out: PreferenceOutput) -> dict[str, Tensor]:
    """This micro-batch's sums of TRL's metrics, and the counts ("_" keys) they divide by: all-reduce every value
    with SUM (over ranks and accumulation steps), then metrics_from_sums. With equal per-rank batches these are
    TRL's gathered means, except that nll_loss is a token mean and kl a mean over micro-batches."""
    c, r = out.chosen_rewards.float(), out.rejected_rewards.float()
    n = c.new_tensor
    sides = {"chosen": (c, out.chosen_logps), "rejected": (r, out.rejected_logps)}
    add = Tensor.sum if out.paired else Tensor.nansum  # KTO's TRL code nansums
    sums = {f"{m}/{s}": add(x.float()) for s, xs in sides.items() for m, x in zip(("rewards", "logps"), xs)}
    if not out.paired:
        kl = out.kl.float().reshape(-1)[0].to(c.device)
        return sums | {"_chosen": n(c.numel()), "_rejected": n(r.numel()), "kl": kl, "_batches": n(1.0)}
    sums |= {"rewards/accuracies": (c > r).float().sum(), "rewards/margins": (c - r).sum(), "_pairs": n(c.numel())}
    sums |= {k: x.float().sum() for k, x in out.logs.items()}
    if out.nll_sum is not None:
        sums |= {"nll_loss": out.nll_sum.float().to(c.device), "_nll_tokens": out.nll_tokens.float().to(c.device)}
    return sums


def metrics_from_sums(sums: Mapping[str, Tensor | float]) -> dict[str, float]:
    """TRL's logged values from (all-reduced) metric_sums; a metric over zero examples is left out, as in TRL."""
    s = {k: float(v) for k, v in sums.items()}
    if "_pairs" in s:
        out = {k: v / s["_pairs"] for k, v in s.items() if k[0] != "_" and k != "nll_loss"} if s["_pairs"] else {}
        if "nll_loss" in s:
            out["nll_loss"] = s["nll_loss"] / s["_nll_tokens"] if s["_nll_tokens"] else 0.0
        return out
    out = {"kl": s["kl"] / s["_batches"]}
    for side in ("chosen", "rejected"):
        out |= {f"{m}/{side}": s[f"{m}/{side}"] / s[f"_{side}"] for m in ("rewards", "logps") if s[f"_{side}"]}
    if s["_chosen"] and s["_rejected"]:
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
    return out
