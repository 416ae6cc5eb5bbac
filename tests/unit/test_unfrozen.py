"""unfrozen_parameters read as Axolotl reads them; ranges and bad regexes refused at the YAML line;
a pattern set that matches no parameter refused before training."""
import pytest
from ds_tp.translators.trainable import pattern_problems, split_names, trainable_matcher

from ds_tp.config import load_config
from ds_tp.errors import UserError
from tests.conftest import MINIMAL

NAMES = ["model.embed_tokens.weight", "model.layers.1.mlp.up_proj.weight", "model.layers.12.mlp.up_proj.weight",
         "model.layers.1.self_attn.q_proj.weight", "model.norm.weight", "lm_head.weight"]


def test_patterns_match_at_the_start_with_literal_dots():
    trains = trainable_matcher(["model.layers.1.mlp", "lm_head"])
    assert [n for n in NAMES if trains(n)] == ["model.layers.1.mlp.up_proj.weight", "lm_head.weight"]
    assert not trainable_matcher(["model.layers.1.mlp"])("model_layers_1_mlp")  # '.' is a literal dot
    assert not trainable_matcher(["embed_tokens"])("model.embed_tokens.weight")  # re.match: from the start
    assert split_names(NAMES, ["^model.layers.1[0-9]+.mlp"])[0] == ["model.layers.12.mlp.up_proj.weight"]
    assert split_names(NAMES, None) == (NAMES, [])


def test_ranges_and_bad_regexes_are_refused_at_their_line(write_config):
    assert [i for i, _ in pattern_problems(["lm_head", "model.embed_tokens.weight$[:32000]", "model.(", ""])] == [1, 2, 3]
    path = write_config(MINIMAL + "unfrozen_parameters:\n  - lm_head\n  - model.embed_tokens.weight$[:32000]\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert str(problem).startswith(f"{path}:10:5: unfrozen_parameters[1]: a row range")


def test_patterns_that_match_nothing_are_refused_before_training(write_config, tmp_path):
    from ds_tp.launch.prepare import check_unfrozen
    from ds_tp.model_config import load_model_config, resolve_model_path
    cfg = load_config(write_config(MINIMAL + "unfrozen_parameters: [transformer.h.0]\n"))
    hf = load_model_config(resolve_model_path("builtin:tiny-llama", tmp_path), {})
    with pytest.raises(UserError) as info:
        check_unfrozen(cfg, hf)
    assert "matches none of the model's parameters" in str(info.value) and "model.embed_tokens.weight" in str(info.value)
    ok = load_config(write_config(MINIMAL + "unfrozen_parameters: [model.norm]\n", "b.yaml"))
    assert check_unfrozen(ok, hf).startswith("unfrozen_parameters: 1 of 39 parameter tensors train")
