"""ds_tp.train.preference_loss against TRL 1.16's own code: DPOTrainer._compute_loss and
KTOTrainer._compute_loss (trainer objects made with object.__new__, given only the attributes those methods
read, and a stand-in model that returns chosen per-token log-probs through TRL's fused-head output),
ORPOTrainer/CPOTrainer.get_batch_loss_metrics (a stand-in model that returns given logits) and their
odds_ratio_loss/cpo_loss, and TRL's fused log-prob kernel and get_batch_logps on the same logits.
Losses, per-example losses, rewards and logged metrics must agree within 1e-6."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from trl import DPOTrainer, KTOTrainer
from trl.experimental.cpo import CPOTrainer
from trl.experimental.orpo import ORPOTrainer
from trl.kernels import ChunkedLogProbFunction
from trl.trainer.utils import FusedCausalLMOutput, add_fused_lm_head

from ds_tp.train.preference_loss import (
    DPO_LOSS_TYPES,
    dpo_losses,
    kto_kl_local,
    kto_losses,
    metric_sums,
    metrics_from_sums,
    orpo_losses,
    sequence_logps,
    simpo_losses,
    wpo_logps,
)

TOL = dict(rtol=1e-6, atol=1e-6)
SEEDS = (0, 1, 2)


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), **TOL)


def close_metrics(ours: dict, trl: dict, names):
    assert {n for n in names if n in trl} == {n for n in names if n in ours}
    for n in names:
        if n in trl:
            close(ours[n], trl[n])


class Acc:
    """Accelerator stand-in for one process; `other_kl` plays a second rank's KL in KTO's first gather."""

    device = torch.device("cpu")

    def __init__(self, other_kl=None):
        self.other_kl = other_kl

    def gather(self, x):
        return x

    def gather_for_metrics(self, x):
        if self.other_kl is not None:
            x, self.other_kl = torch.stack([x, torch.tensor(self.other_kl)]), None
        return x


def stub(cls, **attrs):
    t = object.__new__(cls)
    base = dict(
        model=SimpleNamespace(training=True),
        accelerator=Acc(),
        aux_loss_enabled=False,
        _tp_size=1,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
    )
    t.__dict__.update(base | attrs)
    return t


def last(t):
    return {k: v[-1] for k, v in t._metrics["train"].items()}


def token_rows(gen, n, T):
    """completion_mask (n, T) with a prompt of >= 1 token, per-token log-probs and log sum p^2 on the shifted
    completion positions (0 elsewhere, as TRL's fused head leaves them)."""
    mask = torch.zeros(n, T, dtype=torch.long)
    for i in range(n):
        p = int(torch.randint(1, T // 2, (1,), generator=gen))
        mask[i, p : p + int(torch.randint(1, T - p + 1, (1,), generator=gen))] = 1
    shift = mask[:, 1:].float()
    lp = -4 * torch.rand(n, T - 1, generator=gen) * shift
    lsq = -2 * torch.rand(n, T - 1, generator=gen) * shift
    return mask, lp, lsq


class FusedStandIn:
    """Returns the given per-token log-probs for whichever input_ids tensor it is called on."""

    def __init__(self, rows: dict):
        self.rows = rows

    def __call__(self, input_ids=None, **_):
        lp, lsq = self.rows[id(input_ids)]
        z = torch.zeros_like(lp)
        return FusedCausalLMOutput(log_probs=lp, entropy=z, log_sum_sq_probs=lsq, mean_logits=z, is_top1=z.bool())


DPO_CASES = [[k] for k in DPO_LOSS_TYPES] + [["sigmoid", "ipo", "hinge"], ["robust", "sigmoid_norm"]]
PAIRED = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "nll_loss",
    "log_odds_ratio",
    "log_odds_chosen",
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kinds", DPO_CASES, ids="+".join)
@pytest.mark.parametrize("weighting", [False, True])
def test_dpo_matches_trl(kinds, seed, weighting):
    gen = torch.Generator().manual_seed(seed)
    B, T = (1, 3, 8)[seed], 12
    beta, ls = (0.1, 0.5, 0.05)[seed], (0.0, 0.1, 0.3)[seed] or (1e-3 if "exo_pair" in kinds else 0.0)
    weights = [1.0, 0.5, 0.25][: len(kinds)]
    mask, lp, lsq = token_rows(gen, 2 * B, T)
    ids = torch.randint(0, 50, (2 * B, T), generator=gen)
    ref = lp.sum(-1) + torch.randn(2 * B, generator=gen)
    if B > 1:  # a tie: chosen and rejected alike, not counted as accurate
        mask[B], lp[B], lsq[B], ref[B] = mask[0], lp[0], lsq[0], ref[0]
    t = stub(
        DPOTrainer,
        beta=beta,
        loss_types=kinds,
        loss_weights=weights,
        label_smoothing=ls,
        precompute_ref_logps=True,
        ld_alpha=None,
        f_divergence_type="reverse_kl",
        use_weighting=weighting,
        args=SimpleNamespace(discopop_tau=0.05),
    )

    def trl_loss(rows):
        inputs = dict(
            input_ids=ids[rows],
            attention_mask=torch.ones_like(ids[rows]),
            completion_mask=mask[rows],
            ref_chosen_logps=ref[rows[: len(rows) // 2]],
            ref_rejected_logps=ref[rows[len(rows) // 2 :]],
        )
        return t._compute_loss(FusedStandIn({id(inputs["input_ids"]): (lp[rows], lsq[rows])}), inputs, False)

    n = mask[:, 1:].sum(-1).float()
    wpo = ((lp - lsq) * mask[:, 1:]).sum(-1)
    out = dpo_losses(
        lp[:B].sum(-1),
        lp[B:].sum(-1),
        ref[:B],
        ref[B:],
        beta=beta,
        loss_type=kinds,
        loss_weights=weights,
        label_smoothing=ls,
        chosen_counts=n[:B],
        rejected_counts=n[B:],
        chosen_wpo=wpo[:B] if weighting else None,
        rejected_wpo=wpo[B:] if weighting else None,
    )
    for i in range(B):  # one pair at a time: TRL's per-example loss
        close(out.losses[i], trl_loss(torch.tensor([i, B + i])))
    close(out.loss, trl_loss(torch.arange(2 * B)))
    close_metrics(metrics_from_sums(metric_sums(out)), last(t), PAIRED)
    close(out.chosen_rewards, beta * (lp[:B].sum(-1) - ref[:B]))


@pytest.mark.parametrize("bad", ["aot", "aot_unpaired", "sft", "nope", ["sigmoid", "aot"]])
def test_dpo_refuses_unsupported(bad):
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="supported: sigmoid, hinge, ipo, robust"):
        dpo_losses(x, x, x, x, beta=0.1, loss_type=bad)
    with pytest.raises(ValueError, match="ipo and sigmoid_norm need"):
        dpo_losses(x, x, x, x, beta=0.1, loss_type="ipo")
    with pytest.raises(ValueError, match="exo_pair needs label_smoothing > 0"):
        dpo_losses(x, x, x, x, beta=0.1, loss_type="exo_pair")


def test_dpo_end_to_end_tiny_llama():
    """A tiny Llama with TRL's fused LM head as TRL runs it (reference model, LD-DPO, WPO, loss list) against
    sequence_logps/wpo_logps on the model's plain logits: loss, metrics and the LM head's gradient."""
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    policy, ref = LlamaForCausalLM(cfg), LlamaForCausalLM(cfg)
    add_fused_lm_head(policy, outputs=("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs"))
    add_fused_lm_head(ref)
    B, T, beta, ld = 3, 16, 0.2, 0.5
    gen = torch.Generator().manual_seed(3)
    mask = token_rows(gen, 2 * B, T)[0]
    ids = torch.randint(0, 64, (2 * B, T), generator=gen)
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=mask)
    kinds, weights = ["sigmoid", "ipo"], [1.0, 0.3]
    t = stub(
        DPOTrainer,
        model=policy,
        ref_model=ref,
        beta=beta,
        loss_types=kinds,
        loss_weights=weights,
        label_smoothing=0.0,
        precompute_ref_logps=False,
        ld_alpha=ld,
        f_divergence_type="reverse_kl",
        use_weighting=True,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None, discopop_tau=0.05),
    )
    trl_loss = t._compute_loss(policy, inputs, False)
    trl_grad = torch.autograd.grad(trl_loss, policy.lm_head.weight)[0]

    labels = ids.masked_fill(mask == 0, -100)[:, 1:]
    counts = (labels != -100).sum(-1)
    shared = torch.minimum(counts[:B], counts[B:]).repeat(2)
    logits = policy(input_ids=ids).logits[:, :-1]
    s, n = sequence_logps(logits, labels, shared_len=shared, ld_alpha=ld)
    with torch.no_grad():
        r, _ = sequence_logps(ref(input_ids=ids).logits[:, :-1], labels, shared_len=shared, ld_alpha=ld)
    w = wpo_logps(logits, labels)
    out = dpo_losses(
        s[:B],
        s[B:],
        r[:B],
        r[B:],
        beta=beta,
        loss_type=kinds,
        loss_weights=weights,
        chosen_counts=n[:B],
        rejected_counts=n[B:],
        chosen_wpo=w[:B],
        rejected_wpo=w[B:],
    )
    close(out.loss, trl_loss)
    close_metrics(metrics_from_sums(metric_sums(out)), last(t), PAIRED)
    torch.testing.assert_close(torch.autograd.grad(out.loss, policy.lm_head.weight)[0], trl_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_sequence_logps_matches_trl(seed):
    """The same random logits and -100-masked labels through TRL's fused log-prob kernel (DPO/KTO; an identity
    LM head so its logits are these), and ORPO's and CPO's get_batch_logps (sum and average_log_prob)."""
    gen = torch.Generator().manual_seed(seed)
    B, T, V = (2, 4, 7)[seed], 10, 33
    logits = 3 * torch.randn(B, T, V, generator=gen)
    labels = torch.randint(0, V, (B, T), generator=gen).masked_fill(torch.rand(B, T, generator=gen) < 0.4, -100)
    labels[0] = -100  # a row with no labels: sum 0, count 0
    shift = labels[:, 1:]
    s, n = sequence_logps(logits[:, :-1], shift)
    assert s[0] == 0 and n[0] == 0 and s.dtype == n.dtype == torch.float32
    close(n, (shift != -100).sum(-1))
    valid = shift != -100
    lp, _, lsq, _, _ = ChunkedLogProbFunction.apply(
        logits[:, :-1][valid], torch.eye(V), None, shift[valid], 1.0, 8, None, 1.0, ("log_sum_sq_probs",)
    )
    close(s, torch.zeros_like(s).index_put((valid.nonzero()[:, 0],), lp, accumulate=True))
    close(
        wpo_logps(logits[:, :-1], shift),
        torch.zeros_like(s).index_put((valid.nonzero()[:, 0],), lp - lsq, accumulate=True),
    )
    for cls in (ORPOTrainer, CPOTrainer):
        close(s, cls.get_batch_logps(logits, labels.clone()))
        close((s / n)[1:], cls.get_batch_logps(logits, labels.clone(), average_log_prob=True)[1:])


def pair_batch(gen, B, T, V):
    """ORPO/CPO-style paired batch (right padding, prompt labels -100) and logits for the concatenated rows."""
    batch = {}
    for side in ("chosen", "rejected"):
        ids = torch.randint(1, V, (B, T), generator=gen)
        attn = torch.ones(B, T, dtype=torch.long)
        labels = ids.clone()
        for i in range(B):
            p, end = int(torch.randint(1, 4, (1,), generator=gen)), int(torch.randint(6, T + 1, (1,), generator=gen))
            attn[i, end:], labels[i, :p], labels[i, end:] = 0, -100, -100
        batch |= {f"{side}_input_ids": ids, f"{side}_attention_mask": attn, f"{side}_labels": labels}
    return batch, 2 * torch.randn(2 * B, T, V, generator=gen)


def concat(batch, key):
    return torch.cat([batch[f"chosen_{key}"], batch[f"rejected_{key}"]])


@pytest.mark.parametrize("seed", SEEDS)
def test_orpo_matches_trl(seed):
    gen = torch.Generator().manual_seed(seed)
    B, T, V, beta = (1, 3, 6)[seed], 12, 40, (0.1, 0.25, 1.0)[seed]
    batch, logits = pair_batch(gen, B, T, V)
    t = stub(ORPOTrainer, beta=beta, is_encoder_decoder=False, padding_value=0)
    trl_loss, trl_metrics = t.get_batch_loss_metrics(lambda *a, **k: SimpleNamespace(logits=logits), batch)

    s, n = sequence_logps(logits[:, :-1], concat(batch, "labels")[:, 1:])
    full = batch["chosen_input_ids"].masked_fill(batch["chosen_attention_mask"] == 0, -100)[:, 1:]
    nll_s, nll_n = sequence_logps(logits[:B, :-1], full)
    out = orpo_losses(s[:B], n[:B], s[B:], n[B:], -nll_s, nll_n, beta=beta)
    close(out.loss, trl_loss)
    close_metrics(metrics_from_sums(metric_sums(out)), trl_metrics, PAIRED)
    trl_losses, trl_c, trl_r, _, _ = t.odds_ratio_loss(s[:B] / n[:B], s[B:] / n[B:])
    close(out.losses, -trl_losses)
    close(out.chosen_rewards, trl_c)
    close(out.rejected_rewards, trl_r)
    # the NLL denominator may come from outside (all ranks): the token mean changes accordingly
    other = orpo_losses(s[:B], n[:B], s[B:], n[B:], -nll_s, nll_n, beta=beta, nll_tokens=2 * nll_n.sum())
    close(other.loss, out.loss - 0.5 * (-nll_s.sum() / nll_n.sum()))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cpo_alpha", [1.0, 0.0, 0.5])
def test_simpo_matches_trl(seed, cpo_alpha):
    gen = torch.Generator().manual_seed(seed)
    B, T, V = (1, 3, 6)[seed], 12, 40
    beta, gamma, ls = (2.0, 0.1, 0.5)[seed], (0.5, 1.0, 0.0)[seed], (0.0, 0.1, 0.25)[seed]
    batch, logits = pair_batch(gen, B, T, V)
    t = stub(
        CPOTrainer,
        beta=beta,
        label_smoothing=ls,
        loss_type="simpo",
        cpo_alpha=cpo_alpha,
        simpo_gamma=gamma,
        alpha=0.0,
        is_encoder_decoder=False,
        pad_token_id=0,
    )
    trl_loss, trl_metrics = t.get_batch_loss_metrics(lambda *a, **k: SimpleNamespace(logits=logits), batch)

    s, n = sequence_logps(logits[:, :-1], concat(batch, "labels")[:, 1:])
    out = simpo_losses(s[:B], n[:B], s[B:], n[B:], beta=beta, gamma=gamma, label_smoothing=ls, cpo_alpha=cpo_alpha)
    close(out.loss, trl_loss)
    close_metrics(metrics_from_sums(metric_sums(out)), trl_metrics, PAIRED)
    trl_losses, trl_c, trl_r = t.cpo_loss(s[:B] / n[:B], s[B:] / n[B:])
    close(out.losses, trl_losses)
    close(out.chosen_rewards, trl_c)
    close(out.rejected_rewards, trl_r)


KTO_METRICS = ["kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "rewards/margins"]


@pytest.mark.parametrize("seed", SEEDS + (3,))
@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
@pytest.mark.parametrize("other_rank_kl", [None, 2.5, -40.0])
def test_kto_matches_trl(seed, loss_type, other_rank_kl):
    gen = torch.Generator().manual_seed(seed)
    B, T = (2, 5, 8, 4)[seed], 10
    beta, dw, uw = (0.1, 0.5, 0.05, 0.2)[seed], (1.0, 1.33, 0.7, 1.0)[seed], (1.0, 0.8, 1.5, 2.0)[seed]
    label = torch.rand(B, generator=gen) < 0.5 if seed < 3 else torch.ones(B, dtype=torch.bool)  # seed 3: no rejected
    mask, lp, _ = token_rows(gen, B, T)
    kl_mask, kl_lp, _ = token_rows(gen, B, T)
    ids, kl_ids = torch.randint(0, 50, (B, T), generator=gen), torch.randint(0, 50, (B, T), generator=gen)
    ref = lp.sum(-1) + 2 * torch.randn(B, generator=gen)
    ref_kl = kl_lp.sum(-1) + 2 * torch.randn(B, generator=gen) - (1.0 if seed == 1 else 0.0)
    kto = loss_type == "kto"
    t = stub(
        KTOTrainer,
        beta=beta,
        loss_type=loss_type,
        desirable_weight=dw,
        undesirable_weight=uw,
        calculate_KL=kto,
        precompute_ref_logps=True,
        accelerator=Acc(other_rank_kl if kto else None),
    )

    def trl_loss(rows):
        inputs = dict(
            input_ids=ids[rows],
            attention_mask=torch.ones_like(ids[rows]),
            completion_mask=mask[rows],
            label=label[rows],
            ref_logps=ref[rows],
        )
        if kto:  # the KL rows are the whole batch's in every call, so the KL term is the batch's
            inputs |= dict(
                KL_input_ids=kl_ids,
                KL_attention_mask=torch.ones_like(kl_ids),
                KL_completion_mask=kl_mask,
                ref_KL_logps=ref_kl,
            )
        model = FusedStandIn({id(inputs["input_ids"]): (lp[rows], None), id(kl_ids): (kl_lp, None)})
        return t._compute_loss(model, inputs, False)

    kl = None
    if other_rank_kl is not None and kto:
        kl = (kto_kl_local(kl_lp.sum(-1), ref_kl) + other_rank_kl) / 2  # the loop's all-reduce (AVG)
    s = lp.sum(-1)
    out = kto_losses(
        s[label],
        s[~label],
        kl_lp.sum(-1) if kto else None,
        ref[label],
        ref[~label],
        ref_kl if kto else None,
        beta=beta,
        desirable_weight=dw,
        undesirable_weight=uw,
        kl=kl,
        loss_type=loss_type,
    )
    close(out.loss, trl_loss(torch.arange(B)))
    close_metrics(metrics_from_sums(metric_sums(out)), last(t), KTO_METRICS)
    order = torch.cat([torch.nonzero(label)[:, 0], torch.nonzero(~label)[:, 0]])
    for j, i in enumerate(order.tolist()):  # one example at a time: TRL's per-example loss
        t.accelerator = Acc(other_rank_kl if kto else None)
        close(out.losses[j], trl_loss(torch.tensor([i])))


def test_kto_refuses_unknown_loss_type():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="supported: kto, apo_zero_unpaired"):
        kto_losses(x, x, x, x, x, x, beta=0.1, loss_type="bco")


def test_metric_sums_reduce_over_ranks():
    """Two ranks' sums added (what an all-reduce SUM does) give the metrics of both batches taken as one; KTO's
    KL (the same on every rank once all-reduced) stays itself."""
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(7)) - 20
    k = (x[0] > x[1]).clone()
    losses = (
        lambda y, _: dpo_losses(*y, beta=0.1),
        lambda y, _: orpo_losses(y[0], 30 + y[1], y[2], 30 + y[3], -y[0], 30 + y[1]),
        lambda y, m: kto_losses(y[0][m], y[1][~m], None, y[2][m], y[3][~m], None, beta=0.1, kl=0.7),
    )
    for loss in losses:
        whole = metrics_from_sums(loss(x, k).metric_sums())
        halves = [metric_sums(loss(x[:, :3], k[:3])), metric_sums(loss(x[:, 3:], k[3:]))]
        summed = metrics_from_sums({n: halves[0][n] + halves[1][n] for n in halves[0]})
        assert summed.keys() == whole.keys() and len(whole) >= 6
        for n in whole:
            close(summed[n], whole[n])
    assert whole["kl"] == pytest.approx(0.7)
