"""Row -> the tokens preference training learns from, as Axolotl 0.21 prepares them and TRL 1.16 tokenizes them.

preference_texts (preference_text.py) gives Axolotl's strings; then, per row:
  1. Axolotl's length filter (utils/data/rl.py, excess_length_strategy drop): the row is dropped when
     prompt + chosen or prompt + rejected (kto: prompt + completion), each tokenized without special
     tokens, is longer than sequence_len.
  2. TRL's tokenization, which differs by trainer:
     - dpo, ipo (DPOTrainer) and kto (KTOTrainer): the EOS token's text is appended to each completion
       that does not already end with it; prompt, prompt + chosen and prompt + rejected are tokenized as
       the tokenizer does by default (its BOS, if it adds one, even when the text already starts with
       it); the completion starts where the prompt's ids and each prompt + completion's ids first
       differ (the earlier of the two for a pair). A row whose prompt is sequence_len tokens or more is
       dropped; each prompt + completion is cut to sequence_len (TRL cuts in its collator; the same ids).
     - orpo, simpo (the experimental ORPOTrainer / CPOTrainer): tokenized without special tokens; the
       completion starts at the prompt's length (one token earlier when the last prompt token merges with
       the completion); BOS is put in front unless the prompt starts with it, the EOS id appended unless
       the completion ends with it, and each completion cut so prompt + completion fits sequence_len.
       TRL keeps a row whose prompt alone fills sequence_len (an empty completion, a NaN loss); ds-tp
       drops it.
  max_prompt_len has no effect: TRL 1.16 has no max_prompt_length and Axolotl 0.21 passes none.

Examples: {"prompt_ids", "chosen_ids", "rejected_ids"} (the loss reads prompt + chosen and prompt +
rejected, training on the completion; each already fits sequence_len) or, for kto, {"prompt_ids",
"completion_ids", "label"} with the completion whole: kto_sequence cuts a sequence to sequence_len, and
kl_completion_ids pairs each prompt with another row's completion for KTO's KL term.
"""
from __future__ import annotations

from typing import Callable

from ds_tp.data.preference_text import Texts, TextStep, preference_texts
from ds_tp.data.prompts import BadRow, eos_id
from ds_tp.errors import Problem, UserError
from ds_tp.translators.dataset_types import preference_group

PreferenceExample = dict  # {"prompt_ids", "chosen_ids", "rejected_ids"} or {"prompt_ids", "completion_ids", "label"}
PreferenceRowFormatter = Callable[[dict], list[PreferenceExample]]
CPO_STYLE = ("orpo", "simpo")  # TRL's experimental ORPOTrainer and CPOTrainer tokenize_row


class PreferenceFormatter:
    """row -> [example], or [] for a row dropped as too long (counted in dropped_long, the shortest such
    row's tokens in shortest_dropped); BadRow for a bad row."""

    def __init__(self, texts: TextStep, tokenizer, *, rl: str, sequence_len: int):
        self.texts = texts
        self.tokenizer = tokenizer
        self.rl = rl
        self.sequence_len = sequence_len
        self.dropped_long = 0
        self.shortest_dropped: int | None = None
        eos_id(tokenizer)  # a tokenizer without EOS is refused before any row

    def __call__(self, row: dict) -> list[PreferenceExample]:
        texts = self.texts(row)
        length = axolotl_length(self.tokenizer, texts)
        example = None
        if length <= self.sequence_len:
            example = tokenize_texts(self.tokenizer, texts, rl=self.rl, max_length=self.sequence_len)
        if example is None:
            self.dropped_long += 1
            self.shortest_dropped = min(self.shortest_dropped or length, length)
            return []
        return [example]


def preference_formatter(entry: dict, index: int, cfg: dict, tokenizer) -> PreferenceFormatter:
    """The formatter of datasets[index] under cfg["rl"] (dpo, ipo, simpo, orpo, kto); UserError for a
    config mistake (an unknown type, a bad key)."""
    rl = cfg.get("rl")
    if not isinstance(rl, str) or preference_group(rl) is None:
        raise UserError(Problem(f"{rl!r} is not a preference method", key="rl", hint="dpo, ipo, simpo, orpo or kto"))
    texts = preference_texts(entry, index, cfg, tokenizer)
    return PreferenceFormatter(texts, tokenizer, rl=rl, sequence_len=int(cfg.get("sequence_len") or 512))


def axolotl_length(tokenizer, texts: Texts) -> int:
    """The length Axolotl's drop filter compares with sequence_len: prompt + the longer completion, each
    tokenized without special tokens."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    completions = [texts[k] for k in ("chosen", "rejected", "completion") if k in texts]
    return count(texts["prompt"]) + max(count(text) for text in completions)


def tokenize_texts(tokenizer, texts: Texts, *, rl: str, max_length: int) -> PreferenceExample | None:
    """One row's strings -> its example as TRL's trainer for rl tokenizes them; None when TRL (or ds-tp,
    for orpo/simpo) drops it as too long."""
    if rl == "kto":
        return tokenize_kto(tokenizer, texts["prompt"], texts["completion"], texts["label"], max_length=max_length)
    tokenize = tokenize_cpo if rl in CPO_STYLE else tokenize_dpo
    return tokenize(tokenizer, texts["prompt"], texts["chosen"], texts["rejected"], max_length=max_length)


def tokenize_dpo(tokenizer, prompt: str, chosen: str, rejected: str, *, max_length: int | None) -> PreferenceExample | None:
    """TRL 1.16 DPOTrainer (dpo, ipo): _prepare_dataset's tokenizing and filter, and its collator's cut."""
    prompt_ids, (chosen_ids, rejected_ids) = _split_at_prompt(tokenizer, prompt, [chosen, rejected])
    if max_length is not None:
        if len(prompt_ids) >= max_length:
            return None
        room = max_length - len(prompt_ids)
        chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]
    return {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}


def tokenize_kto(tokenizer, prompt: str, completion: str, label: bool, *, max_length: int | None) -> PreferenceExample | None:
    """TRL 1.16 KTOTrainer: as DPO with one completion; label True for a desirable completion. The
    completion is kept whole: TRL cuts each sequence in its collator (kto_sequence), and a KL sequence
    pairs this completion with another, possibly shorter, prompt."""
    prompt_ids, (completion_ids,) = _split_at_prompt(tokenizer, prompt, [completion])
    if max_length is not None and len(prompt_ids) >= max_length:
        return None
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "label": bool(label)}


def kto_sequence(prompt_ids: list[int], completion_ids: list[int], max_length: int | None) -> tuple[list[int], list[int]]:
    """(input_ids, completion_mask) of prompt + completion cut to max_length, as TRL's KTO collator makes
    them (for an example's own completion and for its KL completion alike)."""
    ids = list(prompt_ids) + list(completion_ids)
    mask = [0] * len(prompt_ids) + [1] * len(completion_ids)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, mask


def _split_at_prompt(tokenizer, prompt: str, completions: list[str]) -> tuple[list[int], list[list[int]]]:
    eos = tokenizer.eos_token
    completions = [text if text.endswith(eos) else text + eos for text in completions]
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    full = [list(tokenizer(prompt + text)["input_ids"]) for text in completions]
    start = min(common_prefix_length(prompt_ids, ids) for ids in full)
    return prompt_ids[:start], [ids[start:] for ids in full]


def tokenize_cpo(tokenizer, prompt: str, chosen: str, rejected: str, *, max_length: int | None) -> PreferenceExample | None:
    """TRL 1.16 ORPOTrainer / CPOTrainer tokenize_row (orpo, simpo), as prompt + two completions.

    TRL gives chosen and rejected each their own prompt ids, which differ only when the last prompt token
    merges with one completion and not the other; prompt_ids is then their common part and the other's
    extra prompt token starts its completion (TRL leaves that one token out of the loss, ds-tp trains on
    it). The sequences are TRL's either way."""
    bos, eos = tokenizer.bos_token_id, eos_id(tokenizer)
    plain = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    sides = []
    for text in (chosen, rejected):
        full = list(tokenizer(prompt + text, add_special_tokens=False)["input_ids"])
        if len(plain) > len(full):
            raise BadRow("", "the prompt has more tokens than prompt + completion (TRL refuses such a row)")
        start = len(plain) if full[:len(plain)] == plain else len(plain) - 1
        sides.append([full[:start], full[start:]])
    (chosen_prompt, _), (rejected_prompt, _) = sides
    differing = sum(a != b for a, b in zip(chosen_prompt, rejected_prompt))
    if differing > 1 or abs(len(chosen_prompt) - len(rejected_prompt)) > 1:
        raise BadRow("", "chosen and rejected tokenize the prompt differently (TRL refuses such a row)")
    for side in sides:
        head, answer = side
        if bos is not None and (not head or head[0] != bos):
            head.insert(0, bos)
        if not answer or answer[-1] != eos:
            answer.append(eos)
        if max_length is not None and len(head) + len(answer) > max_length:
            side[1] = answer[:max(0, max_length - len(head))]
    if any(not answer for _, answer in sides):  # the prompt alone fills max_length: TRL would train on nothing
        return None
    chosen_seq, rejected_seq = (head + answer for head, answer in sides)
    start = common_prefix_length(sides[0][0], sides[1][0])
    return {"prompt_ids": chosen_seq[:start], "chosen_ids": chosen_seq[start:], "rejected_ids": rejected_seq[start:]}


def common_prefix_length(ids: list[int], other: list[int]) -> int:
    length = 0
    for a, b in zip(ids, other):
        if a != b:
            break
        length += 1
    return length


def kl_completion_ids(completion_ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """KTO's mismatched completions, as TRL 1.16 builds them: the examples in training order, in
    consecutive batches of batch_size (per_device_train_batch_size; the last may be shorter), each
    batch's completions rotated by one, so example i of a batch is paired with completion i - 1 and the
    first with the batch's last. The KL sequence of example i is its own prompt_ids + this completion,
    cut to sequence_len. TRL fixes the pairs once, on the dataset in the order it is read (Axolotl's
    shuffled merge, TRL's sequential sampler); with several ranks each micro-batch is such a batch."""
    out: list[list[int]] = []
    for start in range(0, len(completion_ids), batch_size):
        batch = completion_ids[start:start + batch_size]
        out.extend([batch[-1], *batch[:-1]])
    return out

