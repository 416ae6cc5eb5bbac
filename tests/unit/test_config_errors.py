"""Errors name file:line:col, the key path and what would be valid; all errors at once; exit code 2."""
import pytest

from ds_tp.config import load_config
from ds_tp.errors import UserError
from tests.conftest import CARD, MINIMAL


def problems(path, overrides=(), world=None) -> list[str]:
    with pytest.raises(UserError) as info:
        load_config(path, overrides, world)
    return [str(p) for p in info.value.problems]


def test_typo_is_an_error_with_line_and_suggestion(write_config):
    path = write_config(MINIMAL + "lerning_rate: 1e-4\n")
    [msg] = problems(path)
    assert msg.startswith(f"{path}:8:1: lerning_rate: unknown key")
    assert "did you mean 'learning_rate'?" in msg


def test_nested_typo_points_at_nested_line(write_config):
    path = write_config(MINIMAL.replace("    type: alpaca\n", "    type: alpaca\n    feild: text\n"))
    [msg] = problems(path)
    assert msg.startswith(f"{path}:5:5: datasets[0].feild: unknown key")
    assert "did you mean 'field'" in msg


def test_all_errors_reported_at_once(write_config):
    path = write_config(MINIMAL + "tensor_parallel_size: 0\nsequence_len: long\noptimiser: sgd\n")
    msgs = problems(path)
    assert len(msgs) == 3, msgs
    assert any(":8:1: tensor_parallel_size:" in m and "must be >= 1" in m for m in msgs)
    assert any(":9:1: sequence_len: expected an integer" in m for m in msgs)
    assert any(":10:1: optimiser: unknown key" in m and "'optimizer'" in m for m in msgs)


def test_enum_error_lists_valid_values(write_config):
    path = write_config(MINIMAL + "lr_scheduler: cosin\n")
    [msg] = problems(path)
    assert "lr_scheduler: 'cosin' is not allowed" in msg and "did you mean 'cosine'" in msg


def test_wrong_world_size_prints_every_factor(write_config):
    path = write_config(MINIMAL + "dp_shard_size: 4\ntensor_parallel_size: 2\n")
    [msg] = problems(path, world=6)
    assert "dp_replicate(1) * dp_shard(4) * tp(2) * cp(1) = 8 != world 6" in msg
    assert msg.startswith(f"{path}:8:1:")


def test_dp_shard_inferred_from_world(write_config):
    cfg = load_config(write_config(MINIMAL + "tensor_parallel_size: 2\n"), (), 8)
    assert (cfg.layout.dp_shard, cfg.layout.tp, cfg.layout.dp_shard_inferred) == (4, 2, True)
    [msg] = problems(write_config(MINIMAL + "tensor_parallel_size: 3\n", "b.yaml"), world=8)
    assert "world 8 is not divisible by dp_replicate(1) * tp(3) * cp(1) = 3" in msg


@pytest.mark.parametrize("body, needle", [
    ("warmup_steps: 10\nwarmup_ratio: 0.1\n", "warmup_ratio: cannot be used together with warmup_steps"),
    ("save_steps: 10\nsaves_per_epoch: 2\n", "saves_per_epoch: cannot be used together with save_steps"),
    ("bf16: true\nfp16: true\n", "fp16: cannot be used together with bf16"),
    ("batch_size: 8\n", "batch_size: cannot be used together with gradient_accumulation_steps"),
    ("context_parallel_size: 2\nsequence_len: 101\n", "sequence_len 101 is not divisible by context_parallel_size 2"),
    ("flash_attention: true\nattn_implementation: sdpa\n", "flash_attention: conflicts with attn_implementation"),
])
def test_cross_field_rules(write_config, body, needle):
    msgs = problems(write_config(MINIMAL + body), world=None)
    assert any(needle in m for m in msgs), msgs


def test_cp_with_packing_needs_micro_batch_one(write_config):
    text = MINIMAL.replace("micro_batch_size: 1", "micro_batch_size: 2") + "context_parallel_size: 2\nsample_packing: true\n"
    msgs = problems(write_config(text))
    assert any("micro_batch_size: must be 1 with context_parallel_size 2 and sample_packing" in m for m in msgs)


def test_unsupported_training_change_is_an_error(write_config):
    msgs = problems(write_config(MINIMAL + "adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n"
                                           "relora: true\nrelora_steps: 50\n"))
    assert len(msgs) == 1  # one feature, one line: at its first key, naming the others
    assert "relora: valid in Axolotl but not implemented by ds-tp (it changes what is trained)" in msgs[0]
    assert "ReLoRA" in msgs[0] and "with it: relora_steps" in msgs[0]


def test_adapter_keys_without_an_adapter_are_accepted_with_no_effect(write_config):
    cfg = load_config(write_config(MINIMAL + "lora_r: 8\nlora_alpha: 16\nloraplus_lr_ratio: 16\n"))
    summary = [str(n) for n in cfg.notices if "accepted with no effect" in str(n)]
    assert len(summary) == 1 and all(f"{k} (line" in summary[0] for k in ("lora_r", "lora_alpha", "loraplus_lr_ratio"))


@pytest.mark.parametrize("body, needle", [
    ("adapter: lora\nlora_target_linear: true\n", "adapter: lora_r is not set"),
    ("adapter: lora\nlora_r: 8\nlora_alpha: 16\n", "adapter: no layer to adapt"),
    ("adapter: qlora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n", "adapter: qlora trains on a 4-bit base"),
    ("load_in_4bit: true\n", "load_in_4bit: a quantized base trains only through an adapter"),
    ("adapter: llama-adapter\n", "adapter: adapter 'llama-adapter' is not implemented"),
    ("adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\npeft_init_lora_weights: pissa\n",
     "peft_init_lora_weights: 'pissa' is not implemented"),
    ("adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\ntokens: [x]\n",
     "tokens: new tokens with an adapter"),
    ("adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\nunfrozen_parameters: [lm_head]\n",
     "unfrozen_parameters: not implemented with an adapter: Axolotl matches these patterns against the adapter"),
])
def test_adapter_keys_as_axolotl_reads_them(write_config, body, needle):
    msgs = problems(write_config(MINIMAL + body))
    assert any(needle in m for m in msgs), msgs


@pytest.mark.parametrize("body, key", [("peft_use_dora: true\n", "peft_use_dora"),
                                       ("load_in_4bit: true\n", "load_in_4bit"),
                                       ("lora_modules_to_save: [lm_head]\n", "lora_modules_to_save")])
def test_what_tensor_parallel_lora_cannot_do_is_refused_at_its_key(write_config, body, key):
    text = MINIMAL + "adapter: " + ("qlora" if "4bit" in body else "lora") + \
        "\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\ntensor_parallel_size: 2\n" + body
    msgs = problems(write_config(text), world=2)
    assert any(f"{key}: " in m and "tensor" in m.lower() for m in msgs), msgs


def test_backend_tuning_key_is_a_warning_only(write_config):
    cfg = load_config(write_config(MINIMAL + "fsdp_config:\n  auto_wrap_policy: TRANSFORMER_BASED_WRAP\n"))
    summary = [str(n) for n in cfg.notices if "accepted with no effect" in str(n)]
    assert len(summary) == 1 and "fsdp_config.auto_wrap_policy (line " in summary[0]
    assert not cfg.warnings
    assert not cfg.notices or all("ignored" not in str(n) for n in cfg.notices)


def test_missing_required_keys_filled_with_notice():
    cfg = load_config(CARD / "minimal-tp.yaml", (), 2)
    assert cfg.values["learning_rate"] == 2e-5
    assert cfg.values["micro_batch_size"] == 1 and cfg.values["gradient_accumulation_steps"] == 1
    noticed = " ".join(str(n) for n in cfg.notices)
    assert "learning_rate: not set: using 2e-05" in noticed and "micro_batch_size: not set" in noticed


def test_learning_rate_string_becomes_float(write_config):
    assert load_config(write_config(MINIMAL)).values["learning_rate"] == 2e-5
    [msg] = problems(write_config(MINIMAL.replace("2e-5", "fast"), "b.yaml"))
    assert "learning_rate: expected a number" in msg


def test_batch_size_derives_accumulation(write_config):
    text = MINIMAL.replace("gradient_accumulation_steps: 4\n", "batch_size: 8\n").replace("micro_batch_size: 1",
                                                                                            "micro_batch_size: 2")
    assert load_config(write_config(text)).values["gradient_accumulation_steps"] == 4


def test_local_model_heads_checked_against_tp(write_config, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"num_attention_heads": 6, "num_key_value_heads": 3, "hidden_size": 96, '
                                       '"intermediate_size": 256}')
    text = MINIMAL.replace("some/model", str(model)) + "tensor_parallel_size: 2\n"
    msgs = problems(write_config(text), world=2)
    assert any("num_key_value_heads (3) is not divisible by tensor_parallel_size 2" in m for m in msgs)


def test_hub_model_shape_checks_deferred(write_config):
    cfg = load_config(write_config(MINIMAL + "tensor_parallel_size: 2\n"), (), 2)
    assert any("checks against tp/cp happen at train time" in str(n) for n in cfg.notices)


@pytest.mark.parametrize("content, needle", [
    (b"", "empty config"),
    (b"# only a comment\n", "empty config"),
    (b"\x00\x01\x02binary", "binary file"),
    (b"\xff\xfe bad utf8", "not UTF-8"),
    (b"base_model: [unclosed\n", "invalid YAML"),
    (b"- a\n- b\n", "top level must be a mapping"),
    (b"base_model: a\nbase_model: b\n", "duplicate key"),
    (b"a: &x 1\nb: *x\n<<: {c: 1}\n", "merge keys"),
    (b"!!python/object:os.system {}\n", "invalid YAML"),
])
def test_broken_files_are_one_clear_line(tmp_path, content, needle):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    msgs = problems(path)
    assert any(needle in m for m in msgs), msgs
    assert all("\n" not in m and str(path) in m for m in msgs)


def test_missing_file(tmp_path):
    assert "no such config file" in problems(tmp_path / "nope.yaml")[0]


def test_early_stopping_without_an_eval_split_is_a_warning(write_config):
    cfg = load_config(write_config(MINIMAL + "early_stopping_patience: 3\n"))
    assert any("early_stopping_patience: has no effect without val_set_size" in str(w) for w in cfg.warnings)
    assert not load_config(write_config(MINIMAL + "early_stopping_patience: 3\nval_set_size: 0.1\n", "b.yaml")).warnings


def test_legacy_message_fields_read_as_property_mappings(write_config):
    body = MINIMAL.replace("    type: alpaca\n", "    type: chat_template\n    message_field_role: from\n"
                                                  "    message_field_content: value\n")
    cfg = load_config(write_config(body))
    assert cfg.values["datasets"][0]["message_property_mappings"] == {"role": "from", "content": "value"}
    assert "message_field_role" not in cfg.values["datasets"][0]
    assert any("is the old name of message_property_mappings.role" in str(n) for n in cfg.notices)
    clash = body.replace("    message_field_content: value\n", "    message_property_mappings: {role: speaker}\n")
    [msg] = problems(write_config(clash, "b.yaml"))
    assert ":5:5: datasets[0].message_field_role: conflicts with message_property_mappings.role" in msg


def test_fractional_warmup_steps_is_a_ratio_and_cloud_configs_are_named(write_config):
    cfg = load_config(write_config(MINIMAL + "warmup_steps: 0.1\n"))
    assert cfg.values["warmup_ratio"] == 0.1 and "warmup_steps" not in cfg.values
    assert any("read as warmup_ratio: 0.1" in str(n) for n in cfg.notices)
    [msg] = problems(write_config("provider: modal\ngpu: h100\ngpu_count: 1\nsecrets: [HF_TOKEN]\n", "cloud.yaml"))
    assert "this is an Axolotl cloud config (gpu, gpu_count, provider, secrets)" in msg and ":2:1: gpu:" in msg


def test_tokens_as_a_mapping_is_the_old_special_tokens(write_config):
    cfg = load_config(write_config(MINIMAL + "tokens:\n  pad_token: <pad>\n"))
    assert cfg.values["special_tokens"] == {"pad_token": "<pad>"} and "tokens" not in cfg.values
    assert any("old spelling of special_tokens" in str(n) for n in cfg.notices)


def test_named_chat_templates_ds_tp_lacks_are_refused_at_their_key(write_config):
    [msg] = problems(write_config(MINIMAL + "chat_template: qwen3_5\n"))
    assert ":8:1: chat_template: Axolotl's template 'qwen3_5' is not one ds-tp has yet" in msg and "llama3" in msg
    for ok in ("llama3", "gemma3", "tokenizer_default_fallback_chatml", "jinja\nchat_template_jinja: '{{ x }}'"):
        load_config(write_config(MINIMAL + f"chat_template: {ok}\n", "ok.yaml"))
