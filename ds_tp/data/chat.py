"""Row -> tokens for `type: chat_template`: render the conversation with a jinja chat template and
train only on the turns whose role is in roles_to_train.

Masking works on characters, then maps to tokens: the conversation is rendered once whole and once
per turn prefix (messages[:i+1]); each prefix must be a prefix of the whole text, which gives where
every turn ends. A turn's content is found inside its own stretch of text, and the text between the
end of the content and the end of the turn is the turn's closing markup (EOS, <|im_end|>, ...), the
part `train_on_eos` decides about. The full text is tokenized once, so boundaries never change how
a tokenizer merges, and a token is trained when its first character is in a trained stretch.
"""
from __future__ import annotations

from ds_tp.data.prompts import IGNORE, BadRow, Example, Formatter
from ds_tp.errors import Problem, UserError

# Axolotl's chatml, so configs that name it work with tokenizers that carry no template.
CHATML = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NAMED_TEMPLATES = {"chatml": CHATML}
TRAIN_ON_EOS = ("turn", "all", "last", "none")


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


def chat_formatter(tokenizer, *, template: str, field_messages: str, roles_to_train: list[str],
                   train_on_eos: str, property_names: dict | None = None) -> Formatter:
    role_key = (property_names or {}).get("role", "role")
    content_key = (property_names or {}).get("content", "content")
    trained_roles = set(roles_to_train)

    def render(messages: list[dict]) -> str:
        try:
            return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
        except Exception as exc:  # jinja raise_exception(...) and template bugs: the row is refused
            raise BadRow(field_messages, f"the chat template refused this conversation: {_first_line(exc)}")

    def format_row(row: dict) -> list[Example]:
        messages = read_messages(row, field_messages, role_key, content_key)
        full = render(messages)
        trained_spans: list[tuple[int, int]] = []
        closing_spans: list[tuple[int, int, bool]] = []  # (start, end, turn is trained)
        turn_start = 0
        for index, message in enumerate(messages):
            prefix = full if index == len(messages) - 1 else render(messages[:index + 1])
            if not full.startswith(prefix):
                raise BadRow(field_messages, "the chat template renders earlier turns differently once later "
                                             "turns follow, so turns cannot be masked")
            turn_end = len(prefix)
            content = message["content"].strip()
            found = full.find(content, turn_start, turn_end) if content else -1
            if content and found < 0:
                raise BadRow(f"{field_messages}[{index}].content",
                             "the chat template does not show this content as written, so it cannot be masked")
            content_end = found + len(content) if content else turn_end
            trained = message["role"] in trained_roles
            if trained and content:
                trained_spans.append((found, content_end))
            closing_spans.append((content_end, turn_end, trained and bool(content)))
            turn_start = turn_end
        if not trained_spans:
            raise BadRow(field_messages, "no turn to train on (roles_to_train: " + ", ".join(roles_to_train) + ")")
        trained_spans += closing_to_train(closing_spans, train_on_eos)
        ids, starts = tokenize_with_char_starts(tokenizer, full)
        labels = [tok if any(a <= start < b for a, b in trained_spans) else IGNORE for tok, start in zip(ids, starts)]
        return [(ids, labels)]

    return format_row


def closing_to_train(closings: list[tuple[int, int, bool]], train_on_eos: str) -> list[tuple[int, int]]:
    """Which turns' closing markup is trained: of trained turns (turn), of every turn (all), of the
    last trained turn only (last), or none."""
    if train_on_eos == "all":
        return [(a, b) for a, b, _ in closings]
    trained = [(a, b) for a, b, is_trained in closings if is_trained]
    if train_on_eos == "turn":
        return trained
    if train_on_eos == "last":
        return trained[-1:]
    return []


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
