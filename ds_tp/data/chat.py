"""Row -> tokens for `type: chat_template`: render the conversation with a jinja chat template and
train only on the turns whose role is in roles_to_train.

Masking works on characters, then maps to tokens: the conversation is rendered once whole and once
per turn prefix (messages[:i+1]); each prefix must be a prefix of the whole text, which gives where
every turn ends. A turn's content is found inside its own stretch of text. The full text is tokenized
once, so boundaries never change how a tokenizer merges, and a token is trained when its first
character is in a trained turn's content. After each turn's content, as Axolotl does, the first
end-of-turn token (eot_tokens, default eos_token) and the first EOS token within 3 tokens are
trained as train_on_eot / train_on_eos say; the rest of the closing markup (a newline) is not.
"""
from __future__ import annotations

from ds_tp.data.prompts import IGNORE, BadRow, Example, Formatter
from ds_tp.errors import Problem, UserError
from ds_tp.translators.chat_templates import CHATML, NAMED_TEMPLATES  # noqa: F401  (CHATML re-exported)

TRAIN_ON_EOS = ("turn", "all", "last", "none")  # also train_on_eot's values


def resolve_chat_template(tokenizer, name: str | None, jinja: str | None, *, key: str) -> str:
    """The jinja text a dataset renders with. `name` is Axolotl's chat_template value:
    tokenizer_default (the default), tokenizer_default_fallback_<name>, jinja (use `jinja`),
    a known name such as chatml, or jinja text itself."""
    name = name or "tokenizer_default"
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # tokenizers with several named templates
        own = own.get("default")
    if name == "tokenizer_default":
        if not own:
            raise UserError(Problem("the tokenizer has no chat template", key=key,
                                    hint="set chat_template: chatml, or chat_template: jinja with chat_template_jinja"))
        return own
    if name.startswith("tokenizer_default_fallback_"):
        return own or resolve_chat_template(tokenizer, name.removeprefix("tokenizer_default_fallback_"), jinja, key=key)
    if name == "jinja":
        if not jinja:
            raise UserError(Problem("chat_template is 'jinja' but chat_template_jinja is not set", key=key))
        return jinja
    if name in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[name]
    if "{{" in name or "{%" in name:
        return name
    known = ["tokenizer_default", "tokenizer_default_fallback_<name>", "jinja", *NAMED_TEMPLATES]
    raise UserError(Problem(f"unknown chat template {name!r}", key=key, hint="one of: " + ", ".join(known)))


def eot_token_ids(tokenizer, template: str, eot_tokens: list[str] | None, train_on_eos: str,
                  train_on_eot: str) -> tuple[set[int], list[str]]:
    """The ids of the end-of-turn tokens, as Axolotl picks them: eot_tokens, or the tokenizer's eos_token
    when unset; a listed token the template never writes is dropped (returned as a warning), one that
    encodes to several tokens is refused, and eos_token among them needs train_on_eot == train_on_eos."""
    eos = tokenizer.eos_token
    tokens = list(eot_tokens) if eot_tokens is not None else ([eos] if eos is not None else [])
    warnings: list[str] = []
    if tokens != [eos]:
        kept = [t for t in tokens if t in template]
        warnings = [f"eot_tokens: {t!r} is not in the chat template; ignored (as Axolotl)" for t in tokens if t not in kept]
        tokens = kept
        for token in tokens:
            pieces = tokenizer.encode(token, add_special_tokens=False)
            if len(pieces) != 1:
                raise UserError(Problem(f"{token!r} encodes to {len(pieces)} tokens {pieces}, so it cannot mark a turn's end",
                                        key="eot_tokens", hint="add it to the tokenizer as one token, or list another"))
        if eos in tokens and train_on_eos != train_on_eot:
            raise UserError(Problem(f"lists eos_token {eos!r}, so train_on_eot ({train_on_eot}) must equal train_on_eos "
                                    f"({train_on_eos})", key="eot_tokens"))
    ids: set[int] = set()
    for token in tokens:
        encoded = tokenizer.encode(token, add_special_tokens=False)
        if len(encoded) == 1:
            ids.add(encoded[0])
    return ids, warnings


# Axolotl's role names when a dataset sets no `roles`: sharegpt's human/gpt read as user/assistant.
DEFAULT_ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                    "system": "system", "tool": "tool"}


def role_map(roles: dict | None, key: str) -> dict[str, str] | None:
    """A dataset's `roles` ({template role: [names in the data]}) as {name in the data: template role};
    None keeps the default map."""
    if roles is None:
        return None
    if not isinstance(roles, dict) or not all(
            isinstance(names, list) and names and all(isinstance(n, str) for n in names) for names in roles.values()):
        raise UserError(Problem("expected a mapping of template role to a list of role names in the data",
                                key=key, hint="e.g. roles: {user: [human], assistant: [gpt]}"))
    return {name: role for role, names in roles.items() for name in names}


def chat_formatter(tokenizer, *, template: str, field_messages: str, roles_to_train: list[str],
                   train_on_eos: str, train_on_eot: str | None = None, eot_ids: set[int] | None = None,
                   train_on_inputs: bool = False, property_names: dict | None = None,
                   role_map: dict[str, str] | None = None, drop_system_message: bool = False) -> Formatter:
    role_key = (property_names or {}).get("role", "role")
    content_key = (property_names or {}).get("content", "content")
    role_map = DEFAULT_ROLE_MAP if role_map is None else role_map
    trained_roles = {role_map.get(role, role) for role in roles_to_train}
    train_on_eot = train_on_eot or train_on_eos
    if eot_ids is None:
        eot_ids = eot_token_ids(tokenizer, template, None, train_on_eos, train_on_eot)[0]
    closers = ((eot_ids, train_on_eot), ({tokenizer.eos_token_id}, train_on_eos))

    def render(messages: list[dict]) -> str:
        try:
            return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
        except Exception as exc:  # jinja raise_exception(...) and template bugs: the row is refused
            raise BadRow(field_messages, f"the chat template refused this conversation: {_first_line(exc)}")

    def format_row(row: dict) -> list[Example]:
        messages = read_messages(row, field_messages, role_key, content_key)
        for message in messages:
            message["role"] = role_map.get(message["role"], message["role"])
        if drop_system_message and messages[0]["role"] == "system":
            messages = messages[1:]
            if not messages:
                return [([], [])]
        full = render(messages)
        turns = content_spans(messages, full, render, field_messages)
        ids, starts = tokenize_with_char_starts(tokenizer, full)
        labels = [IGNORE] * len(ids)
        last = [-1, -1]  # the last EOT / EOS token found after a turn
        for message, (begin, end) in zip(messages, turns):
            trains = train_on_inputs or message["role"] in trained_roles
            if not trains and train_on_eos != "all" and train_on_eot != "all":
                continue
            if begin == end:  # an empty turn: nothing to train, no end to look after
                continue
            first = next((i for i, start in enumerate(starts) if start >= begin), len(ids))
            after = next((i for i, start in enumerate(starts) if start >= end), len(ids))
            if trains:
                labels[first:after] = ids[first:after]
            for slot, (wanted, mode) in enumerate(closers):
                # Axolotl's rule: the first such token after the content, if within 3 tokens of it
                found = next((i for i in range(after, len(ids)) if ids[i] in wanted), -1)
                if found == -1 or found - after > 3:
                    continue
                last[slot] = found
                if mode == "all" or (mode == "turn" and trains):
                    labels[found] = ids[found]
        # a conversation with no trained turn keeps only masked labels: preparation drops it and counts it,
        # as Axolotl drops samples with no trainable token
        for slot, (_, mode) in enumerate(closers):
            if mode == "last" and last[slot] != -1:
                labels[last[slot]] = ids[last[slot]]
        return [(ids, labels)]

    return format_row


def content_spans(messages: list[dict], full: str, render, field_messages: str) -> list[tuple[int, int]]:
    """(start, end) characters of each turn's content in the rendered text: the content as written,
    whitespace included, as Axolotl trains it (stripped only where the template trims it); an empty or
    whitespace-only content is an empty span at its turn's end."""
    ends = []
    for index in range(len(messages)):
        prefix = full if index == len(messages) - 1 else render(messages[:index + 1])
        if not full.startswith(prefix):
            raise BadRow(field_messages, "the chat template renders earlier turns differently once later "
                                         "turns follow, so turns cannot be masked")
        ends.append(len(prefix))
    spans = []
    turn_start = 0
    for index, message in enumerate(messages):
        content = message["content"]
        if not content.strip():
            spans.append((ends[index], ends[index]))
            turn_start = max(turn_start, ends[index])
            continue
        # its own stretch of text first; then the next turn's, for templates that show a turn inside the
        # next one (Gemma 3 opens the first user turn with the system content)
        for stop in (ends[index], ends[min(index + 1, len(messages) - 1)]):
            found, shown = find_shown(full, content, turn_start, stop)
            if found >= 0:
                break
        if found < 0:
            raise BadRow(f"{field_messages}[{index}].content",
                         "the chat template does not show this content as written, so it cannot be masked")
        spans.append((found, found + len(shown)))
        turn_start = max(ends[index], found + len(shown))
    return spans


def find_shown(full: str, content: str, start: int, stop: int) -> tuple[int, str]:
    """Where `content` is shown in full[start:stop]: as written, or stripped (templates that trim it)."""
    found = full.find(content, start, stop)
    if found < 0:
        content = content.strip()
        found = full.find(content, start, stop)
    return found, content


def read_messages(row: dict, field: str, role_key: str, content_key: str) -> list[dict]:
    messages = row.get(field)
    if messages is None:
        raise BadRow(field, "missing")
    if not isinstance(messages, list) or not messages:
        raise BadRow(field, "expected a non-empty list of {role, content} messages")
    out = []
    for index, message in enumerate(messages):
        where = f"{field}[{index}]"
        if not isinstance(message, dict):
            raise BadRow(where, f"expected a mapping with '{role_key}' and '{content_key}'")
        role, content = message.get(role_key), message.get(content_key)
        if not isinstance(role, str):
            raise BadRow(f"{where}.{role_key}", "missing" if role is None else "expected a string")
        if not isinstance(content, str):
            raise BadRow(f"{where}.{content_key}", "missing" if content is None else "expected a string")
        out.append({"role": role, "content": content})
    return out


def tokenize_with_char_starts(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """Token ids of rendered text (its special tokens are already in the text, so none are added)
    and the character where each token starts."""
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [start for start, _ in encoded["offset_mapping"]]
    # Slow tokenizers have no offsets: a token starts where the decoded prefix before it ends.
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    starts = [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]
    return ids, starts


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
