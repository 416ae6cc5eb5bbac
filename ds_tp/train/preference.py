"""Preference tuning in ds-tp's loop (rl: dpo, ipo, orpo, simpo, kto): the same steps, batches, layouts,
checkpoints and logs as supervised training; only what one row is and what its loss is change.

A row holds two sequences: (chosen, rejected) for the pairwise methods, (completion, a KL completion:
the same prompt with another row's completion) for KTO. One forward takes the micro-batch's 2 x micro
sequences; each sequence's log-probability of its answer tokens is summed on this rank's sequence shard
and, under context parallelism, completed across the CP group with the other ranks' shares detached
(each CP rank backpropagates the whole loss through its own shard; the gradients add up over the CP
ranks as the supervised loss's do). The losses are TRL's (preference_loss.py).

Scale: one optimizer step minimises the mean of the per-row losses over the global batch (TRL's mean
over a device's batch, averaged over devices and accumulation steps, when every batch is full). The NLL
terms of ORPO and SimPO (cpo_alpha) are token means over the global batch's chosen answers.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext

import numpy as np
import torch

from ds_tp.labels import IGNORE
from ds_tp.train import preference_loss as losses
from ds_tp.train.batches import collate, shard_sequence, trainable_tokens
from ds_tp.train.loop import Trainer
from ds_tp.train.reference import Reference

SEQUENCES = {True: ("chosen", "rejected"), False: ("completion", "kl")}  # paired or KTO


class PreferenceTrainer(Trainer):
    def __init__(self, *args, reference: Reference, **kwargs):
        self.preference = args[1].preference  # (plan, run, ...): the run's decision
        self.first, self.second = SEQUENCES[self.preference.paired]
        super().__init__(*args, **kwargs)
        self.reference = reference
        self.loss_copies = self.layout.tp * self.layout.cp  # every TP and CP rank holds the whole row losses
        # the tokens ORPO's NLL counts (the chosen sequence whole, as TRL) or SimPO's (the chosen answer)
        chosen = self.train_rows[f"{self.first}_labels"]
        self.nll_tokens = np.array([len(x) - 1 if self.preference.method == "orpo" else trainable_tokens(x)
                                    for x in chosen], dtype=np.int64)
        self.nll_scale = 0.0
        self.sums: dict = defaultdict(float)
        self.shared_len: torch.Tensor | None = None  # LD-DPO: this batch's per-sequence shared answer length
        self.wpo: torch.Tensor | None = None  # WPO: the policy's per-sequence weights' log sums

    def run(self, *args, **kwargs) -> int:
        reached = super().run(*args, **kwargs)
        self.engine.empty_partition_cache()  # ZeRO-3: no prefetched parameter left in flight for the export
        return reached

    def _chunked_head(self, cfg):
        if cfg.get("chunked_cross_entropy"):
            self.log("chunked_cross_entropy: not used by preference tuning (its log-probs read the logits)")
        return None

    def _loss_weights(self, rows) -> np.ndarray:
        return np.ones(len(rows), dtype=np.int64)  # the loss is a mean over rows (pairs)

    def _begin_step(self, global_rows: np.ndarray) -> None:
        # ORPO / SimPO's NLL: a token mean over the global batch's chosen answers, expressed per row
        tokens = max(1, int(self.nll_tokens[global_rows].sum()))
        self.nll_scale = len(global_rows) / tokens
        self.sums = defaultdict(float)

    def _rows(self, dataset, indices) -> list[dict]:
        split = "train" if dataset is self.train_rows else "eval"
        return [{**dataset[int(i)], "_index": int(i), "_split": split} for i in indices]

    # --- log-probabilities ------------------------------------------------------------------
    def _batch(self, rows: list[dict]) -> tuple[dict, list[torch.Tensor]]:
        """The 2 x rows sequences as one batch, and the shifted labels to score: the answers' (prompt masked)
        and, for ORPO's NLL, every real token of the sequence (TRL's ORPO labels the prompt too)."""
        sequences = [{"input_ids": r[f"{name}_input_ids"], "labels": r[f"{name}_labels"]}
                     for name in (self.first, self.second) for r in rows]
        batch = collate(sequences, self.pad_id, multiple_of=self.resolved.sequence_divisor, pad_to=self.pad_to)
        if self.preference.method == "orpo":
            whole = torch.full_like(batch["input_ids"], IGNORE)
            for i, s in enumerate(sequences):
                whole[i, :len(s["input_ids"]) - 1] = torch.tensor(s["input_ids"][1:])
            batch["shift_whole"] = whole
        if self.preference.ld_alpha is not None:  # LD-DPO: each row's answer tokens past its pair's shorter answer
            counts = (batch["shift_labels"] != IGNORE).sum(dim=1)
            n = len(rows)
            shared = torch.minimum(counts[:n], counts[n:]).repeat(2)
            start = batch["shift_labels"].shape[1] // self.layout.cp * self.mesh.coords["cp"]
            before = (batch["shift_labels"][:, :start] != IGNORE).sum(dim=1)  # answer tokens in earlier CP shards
            self.shared_len = (shared - before).to(self.device)
        batch = self._to_device(shard_sequence(batch, self.mesh.coords["cp"], self.layout.cp))
        return batch, [batch.pop(k) for k in ("shift_labels", "shift_whole") if k in batch]

    def sequence_logps(self, model, batch: dict, shifts: list[torch.Tensor],
                       policy: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per labels in shifts: (sum of the labelled tokens' log-probs, their count) per sequence, whole
        across the CP shards of the sequence (LD-DPO's weights on the answers' sums). With WPO
        (dpo_use_weighting) the policy's per-sequence WPO sums are kept in self.wpo."""
        with self.forward_memory() if policy else nullcontext():
            logits = model(**batch, use_cache=False).logits
        out = []
        if self.preference.use_weighting and policy:
            self.wpo = losses.wpo_logps(logits, shifts[0])
            if self.layout.cp > 1:
                self.dist.all_reduce(self.wpo, group=self.mesh.sp_group)
        for index, shift in enumerate(shifts):
            ld = {"shared_len": self.shared_len, "ld_alpha": self.preference.ld_alpha} \
                if index == 0 and self.preference.ld_alpha is not None else {}
            local, count = losses.sequence_logps(logits, shift, **ld)
            if self.layout.cp > 1:
                whole = local.detach().clone()
                self.dist.all_reduce(whole, group=self.mesh.sp_group)
                local = local + (whole - local.detach())  # the value of the whole, the gradient of this shard
                count = count.clone()
                self.dist.all_reduce(count, group=self.mesh.sp_group)
            out.append((local, count))
        return out

    def _loss_sum(self, rows: list[dict]) -> torch.Tensor:
        """The sum of the rows' losses (every TP/CP rank holds it whole), differentiable through this rank."""
        batch, shifts = self._batch(rows)
        ref = self.reference.logps(rows, batch, shifts[:1], self)  # (2 x rows,) or None
        (policy, count), *whole = self.sequence_logps(self.engine, batch, shifts, policy=True)
        n, pref = len(rows), self.preference
        first, second, n_first, n_second = policy[:n], policy[n:], count[:n], count[n:]
        nll = None  # ORPO / SimPO: the summed NLL of the chosen tokens, scaled to a global token mean
        if pref.method in ("dpo", "ipo"):
            out = losses.dpo_losses(first, second, ref[:n], ref[n:], beta=pref.beta, loss_type=list(pref.loss_types),
                                    loss_weights=list(pref.loss_weights), label_smoothing=pref.label_smoothing,
                                    chosen_counts=n_first, rejected_counts=n_second,
                                    **({"chosen_wpo": self.wpo[:n], "rejected_wpo": self.wpo[n:]}
                                       if pref.use_weighting else {}))
        elif pref.method == "orpo":
            whole_sum, whole_count = whole[0][0][:n], whole[0][1][:n]
            out = losses.orpo_losses(first, n_first, second, n_second, -whole_sum.detach(), whole_count, beta=pref.beta)
            nll = -whole_sum.sum()
        elif pref.method == "simpo":
            out = losses.simpo_losses(first, n_first, second, n_second, beta=pref.beta, gamma=pref.simpo_gamma,
                                      label_smoothing=pref.label_smoothing, cpo_alpha=pref.cpo_alpha)
            nll = -first.sum() * pref.cpo_alpha if pref.cpo_alpha else None
        else:
            wanted = torch.tensor([bool(r["label"]) for r in rows], device=first.device)
            out = losses.kto_losses(first[wanted], first[~wanted], None, ref[:n][wanted], ref[:n][~wanted], None,
                                    beta=pref.beta, desirable_weight=pref.desirable_weight,
                                    undesirable_weight=pref.undesirable_weight, kl=self._kto_kl(second - ref[n:]))
        for name, value in out.metric_sums().items():
            self.sums[name] += float(value)
        total = out.losses.sum()
        return total if nll is None else total + nll * self.nll_scale

    def _kto_kl(self, difference: torch.Tensor) -> torch.Tensor:
        """KTO's KL estimate: the mean over every data-parallel rank's micro-batch of policy - reference
        log-probs of the mismatched completions, no gradient (TRL's, for equal batches; clamped at 0 by
        kto_losses)."""
        both = torch.stack([difference.detach().sum().double(),
                            torch.tensor(float(len(difference)), device=difference.device).double()])
        self.dist.all_reduce(both)  # TP/CP copies count in both sums alike
        return (both[0] / both[1]).to(difference.dtype)

    # --- figures ----------------------------------------------------------------------------
    def _reduced(self, prefix: str = "") -> dict:
        names = sorted(self.sums)
        values = torch.tensor([self.sums[k] for k in names], dtype=torch.float64, device=self.device)
        self.dist.all_reduce(values)  # TP/CP copies scale every sum and every count alike
        return {prefix + k: v for k, v in losses.metrics_from_sums(dict(zip(names, values.tolist()))).items()}

    def _log_row(self, *args, **kwargs) -> dict:
        row = super()._log_row(*args, **kwargs)
        row.update(self._reduced())
        return row

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean row loss over the eval split, and the reward figures as eval_rewards/..."""
        self.engine.eval()
        kept, self.sums = self.sums, defaultdict(float)
        dp_rank, dp = self.mesh.coords["dp"], self.layout.dp
        mine = list(range(dp_rank, len(self.eval_rows), dp))
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        count = torch.zeros((), device=self.device, dtype=torch.float64)
        batches = -(-(-(-len(self.eval_rows) // dp)) // self.micro)  # every rank runs as many forwards
        self.nll_scale = 0.0  # eval_loss is the preference term alone
        for b in range(batches):
            chunk = mine[b * self.micro:(b + 1) * self.micro]
            rows = self._rows(self.eval_rows, chunk or [0])
            before = dict(self.sums)
            local = self._loss_sum(rows)
            if chunk:
                total += local.double()
                count += len(chunk)
            else:  # a filler forward for the collectives: its figures do not count
                self.sums = defaultdict(float, before)
        self.dist.all_reduce(total)
        self.dist.all_reduce(count)
        self.eval_metrics = {"eval_" + k: v for k, v in self._reduced().items()}
        self.sums = kept
        self.engine.empty_partition_cache()  # ZeRO-3: nothing prefetched by the no-grad forwards left in flight
        self.engine.train()
        copies = self.loss_copies
        return (total / copies).item() / max(1.0, (count / copies).item())
