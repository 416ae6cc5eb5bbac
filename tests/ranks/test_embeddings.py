"""tokens + resize_token_embeddings_to_32x under ZeRO-3 (2 ranks): the embeddings grow to a multiple of
32 rows, the new rows start at the base rows' mean, and the exported model and tokenizer agree."""
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ds_tp.assets import resolve_builtin_model
from tests.ranks.harness import losses, train


def test_added_tokens_grow_the_embeddings_to_32x(tmp_path):
    out = tmp_path / "run"
    rows = train(out, ["--max-steps", "2", "--logging-steps", "1", "--sequence-len", "64", "--dp-shard-size", "2",
                       "--tokens", "[<tool>]", "--resize-token-embeddings-to-32x", "true", "--save-steps", "1"], 2)
    assert len(losses(rows)) == 2
    run = json.loads((out / "ds_tp" / "run.json").read_text())
    assert run["run"]["model"]["vocab"] == 128  # 112 tokens (the base model has 112 rows) -> 128 rows
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 112 and tok.convert_tokens_to_ids("<tool>") == 111
    assert tok("a<tool>b", add_special_tokens=False)["input_ids"][1] == 111
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == 128
    base = AutoModelForCausalLM.from_pretrained(resolve_builtin_model("builtin:tiny-llama"))
    base_mean = base.get_input_embeddings().weight.mean(0)
    new_rows = model.get_input_embeddings().weight[112:]  # rows 112..127 are new
    # never in the data, so untouched by training: still at the mean they started from, on every row
    assert torch.allclose(new_rows, base_mean.expand_as(new_rows), atol=1e-3)
    # ds-tp export of a checkpoint builds the resized model too
    from ds_tp.export_checkpoint import export_checkpoint
    export_checkpoint(out / "checkpoint-1", tmp_path / "exported")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "exported").get_input_embeddings().num_embeddings == 128
