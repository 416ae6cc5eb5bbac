"""bitsandbytes' 8-bit AdamW, built by ds-tp and handed to DeepSpeed: trains under ZeRO-3 on 2 ranks,
and its quantized state is saved and restored so a resume logs the same losses."""
import json

import torch

from tests.ranks.harness import losses, train

EIGHT_BIT = ["--max-steps", "6", "--logging-steps", "1", "--sequence-len", "64", "--optimizer", "adamw_bnb_8bit",
             "--learning-rate", "1e-3", "--warmup-steps", "1", "--weight-decay", "0.01"]


def test_adamw_bnb_8bit_trains_and_resumes_exactly(tmp_path):
    a_rows = train(tmp_path / "A", [*EIGHT_BIT, "--save-steps", "3"], 2)
    ds = json.loads((tmp_path / "A" / "ds_tp" / "deepspeed_config.json").read_text())
    assert "optimizer" not in ds and ds["zero_optimization"]["stage"] == 3
    first = losses(a_rows)
    assert len(first) == 6 and first[-1] < first[0]
    # the moments DeepSpeed saved are bitsandbytes' 8-bit ones, not a 32-bit AdamW's
    saved = torch.load(tmp_path / "A" / "checkpoint-3" / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                       weights_only=False)["optimizer_state_dict"]["optimizer_state_dict"]["state"][0]
    assert saved["__bnb_optimizer_quant_state__"]["state1"].dtype == torch.uint8
    b_rows = train(tmp_path / "B", [*EIGHT_BIT, "--resume-from-checkpoint", str(tmp_path / "A" / "checkpoint-3")], 2)
    assert losses(b_rows) == first[3:]
