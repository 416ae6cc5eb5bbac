"""`ds-tp inference`: the prompt tokens training used, which model is loaded, greedy decoding, stdin."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from ds_tp.config import load_config
from ds_tp.data.formats import formatter_for
from ds_tp.data.prompts import IGNORE, alpaca_prompt
from ds_tp.errors import UserError
from ds_tp.inference import load_model, prompt_ids, run_inference
from ds_tp.model_config import load_tokenizer, resolve_model_path

PROMPT = "Last letter?\nabcd"
ALPACA = "datasets:\n  - path: {data}\n    type: alpaca\n"
CHAT = ("datasets:\n  - path: {data}\n    type: chat_template\n    chat_template: tokenizer_default\n"
        "    field_messages: messages\n")
USER_DEFINED = ("datasets:\n  - path: {data}\n    type:\n      field_instruction: q\n      field_output: a\n"
                "      format: '[Q] {{instruction}} {{input}} [A] '\n"
                "      no_input_format: '[Q] {{instruction}} [A] '\n"
                "      system_prompt: 'Be brief.'\n      system_format: '({{system}}) '\n")


@pytest.fixture(scope="module")
def base() -> str:
    return resolve_model_path("builtin:tiny-llama", Path("."))


def write_config(tmp_path: Path, datasets: str = ALPACA, extra: str = "") -> Path:
    text = (f"base_model: builtin:tiny-llama\nsequence_len: 256\noutput_dir: {tmp_path / 'out'}\n"
            + datasets.format(data=tmp_path / "data.jsonl") + extra)
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def values_of(path: Path) -> dict:
    return load_config(path, [], None).values


def masked_prefix(ids: list[int], labels: list[int]) -> list[int]:
    """What training fed the model before the first token it learned to predict: the prompt part."""
    return ids[:next(i for i, label in enumerate(labels) if label != IGNORE)]


@pytest.mark.parametrize("datasets, row", [
    (ALPACA, {"instruction": PROMPT, "output": "d"}),
    (USER_DEFINED, {"q": PROMPT, "a": "d"}),
    (CHAT, {"messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "d"}]}),
], ids=["alpaca", "user-defined", "chat_template"])
def test_prompt_is_what_training_tokenized(tmp_path, base, datasets, row):
    values = values_of(write_config(tmp_path, datasets))
    tokenizer = load_tokenizer(base, values)
    [(ids, labels)] = formatter_for(values["datasets"][0], 0, values, tokenizer)(row)
    assert prompt_ids(PROMPT + "\n", values, tokenizer) == masked_prefix(ids, labels)


def test_alpaca_prompt_is_axolotls_text(tmp_path, base):
    values = values_of(write_config(tmp_path))
    tokenizer = load_tokenizer(base, values)
    assert tokenizer.decode(prompt_ids(PROMPT, values, tokenizer)) == "<s>" + alpaca_prompt(PROMPT)


def test_config_chat_template_wins_over_alpaca_and_ends_in_the_assistant_turn(tmp_path, base):
    values = values_of(write_config(tmp_path, extra="chat_template: tokenizer_default\n"))
    tokenizer = load_tokenizer(base, values)
    assert tokenizer.decode(prompt_ids(PROMPT, values, tokenizer)) == f"<s><|user|>\n{PROMPT}</s>\n<|assistant|>\n"


def test_prompt_filling_sequence_len_is_refused(tmp_path, base):
    values = values_of(write_config(tmp_path))
    tokenizer = load_tokenizer(base, values)
    with pytest.raises(UserError, match="fills sequence_len"):
        prompt_ids("x" * 300, values, tokenizer)


def manual_greedy(model, tokenizer, ids: list[int], steps: int) -> str:
    """ds_tp.assets.greedy_accuracy's loop: the argmax of a full forward pass, until EOS."""
    answer: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([ids + answer])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            answer.append(token)
    return tokenizer.decode(answer, skip_special_tokens=True)


def infer(config: Path, prompt: str | None = PROMPT, stdin=None, **kwargs) -> str:
    out = io.StringIO()
    run_inference(config, [], lora_model_dir=kwargs.pop("lora_model_dir", None), prompt=prompt,
                  max_new_tokens=kwargs.pop("max_new_tokens", 6), temperature=kwargs.pop("temperature", None),
                  stdin=stdin or io.StringIO(""), out=out)
    return out.getvalue()


def reference(model, base: str, config: Path) -> str:
    values = values_of(config)
    tokenizer = load_tokenizer(base, values)
    return manual_greedy(model.eval(), tokenizer, prompt_ids(PROMPT, values, tokenizer), 6) + "\n"


def test_greedy_output_is_the_manual_greedy_loop(tmp_path, base):
    from transformers import AutoModelForCausalLM

    config = write_config(tmp_path)
    expected = reference(AutoModelForCausalLM.from_pretrained(base), base, config)
    assert len(expected) > 1 and infer(config) == expected


def test_trained_model_in_output_dir_wins_over_base_model(tmp_path, base):
    from transformers import AutoModelForCausalLM

    config = write_config(tmp_path)
    trained = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        trained.lm_head.weight.neg_()  # one weight changed: every logit flips sign
    trained.generation_config.no_repeat_ngram_size = 1  # generation_config.json must not make greedy anything else
    trained.save_pretrained(tmp_path / "out")
    load_tokenizer(base, {}).save_pretrained(str(tmp_path / "out"))
    model, _ = load_model(load_config(config, [], None))
    assert torch.equal(model.lm_head.weight, trained.lm_head.weight)
    answer = infer(config)
    assert answer == reference(trained, base, config)
    assert answer != reference(AutoModelForCausalLM.from_pretrained(base), base, config)


def save_adapter(base: str, folder: Path, seed: int):
    """A LoRA adapter whose B matrices are not zero, so it changes the answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(str(folder))
    return model


def lora_b(model) -> torch.Tensor:
    return next(p for n, p in model.named_parameters() if "lora_B" in n)


LORA = "adapter: lora\nlora_r: 4\nlora_alpha: 64\nlora_target_modules: [q_proj, v_proj, down_proj]\n"


def test_adapter_from_output_dir_then_config_then_flag(tmp_path, base):
    in_output = save_adapter(base, tmp_path / "out", seed=1)
    config = write_config(tmp_path, extra=LORA)
    model, _ = load_model(load_config(config, [], None))
    assert torch.equal(lora_b(model), lora_b(in_output))
    assert infer(config) == reference(in_output, base, config)
    named = save_adapter(base, tmp_path / "named", seed=2)
    config = write_config(tmp_path, extra=LORA + f"lora_model_dir: {tmp_path / 'named'}\n")
    assert torch.equal(lora_b(load_model(load_config(config, [], None))[0]), lora_b(named))
    flagged = save_adapter(base, tmp_path / "flagged", seed=3)
    model, _ = load_model(load_config(config, [], None), tmp_path / "flagged")
    assert torch.equal(lora_b(model), lora_b(flagged))


def test_bad_lora_model_dir_names_the_path(tmp_path):
    config = write_config(tmp_path, extra=LORA)
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "missing", tmp_path / "empty"):
        with pytest.raises(UserError) as caught:
            infer(config, lora_model_dir=folder)
        assert str(caught.value).startswith(f"--lora-model-dir: {folder}: not an adapter folder")


def test_adapter_run_without_an_adapter_is_refused(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path / 'out'}: no trained adapter here"):
        infer(write_config(tmp_path, extra=LORA))


def test_missing_base_model_folder_is_one_line(tmp_path):
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("builtin:tiny-llama", str(tmp_path / "nowhere")))
    with pytest.raises(UserError, match="nowhere"):
        infer(config)


def test_adapter_of_another_model_is_one_line(tmp_path):
    other = resolve_model_path("builtin:tiny-qwen2", tmp_path)
    save_adapter(other, tmp_path / "out", seed=1)
    with pytest.raises(UserError, match="does not fit"):
        infer(write_config(tmp_path, extra=LORA))


def test_piped_stdin_is_one_prompt(tmp_path, base):
    config = write_config(tmp_path)
    assert infer(config, prompt=None, stdin=io.StringIO(PROMPT + "\n")) == infer(config)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_stdin_answers_each_line_until_an_empty_one(tmp_path, base):
    config = write_config(tmp_path)
    one = infer(config, prompt="Last letter?")
    two = infer(config, prompt="First letter?")
    assert infer(config, prompt=None, stdin=Terminal("Last letter?\nFirst letter?\n\nUpper?\n")) == one + two


@pytest.mark.parametrize("kwargs, where", [
    ({"prompt": "  \n"}, "--prompt"), ({"prompt": None}, "stdin"), ({"max_new_tokens": 0}, "--max-new-tokens"),
    ({"temperature": -1.0}, "--temperature"), ({"temperature": float("nan")}, "--temperature")])
def test_user_mistakes_are_one_line_errors(tmp_path, kwargs, where):
    with pytest.raises(UserError) as caught:
        infer(write_config(tmp_path), **kwargs)
    assert str(caught.value).startswith(f"{where}: ") and "\n" not in str(caught.value)


def test_sampling_with_a_temperature_runs(tmp_path):
    torch.manual_seed(0)
    assert infer(write_config(tmp_path), temperature=0.7).endswith("\n")


class AddsEos:
    """A tokenizer that ends every text with EOS (some do): the prompt must not end the text."""
    eos_token_id, bos_token_id = 2, 1

    def __call__(self, text, **kwargs):
        return {"input_ids": [1, *range(10, 10 + len(text)), 2]}


def test_trailing_eos_of_the_prompt_is_dropped():
    values = {"datasets": [{"path": "x", "type": "completion"}]}
    assert prompt_ids("abc", values, AddsEos()) == [1, 10, 11, 12]
