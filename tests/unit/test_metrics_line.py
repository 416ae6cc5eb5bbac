"""The log line a user reads: loss, lr, grad norm, tokens/s, memory, MFU, and skipped steps when any."""
from ds_tp.train.metrics import fmt

ROW = {"step": 7, "total_steps": 10, "loss": 1.23456, "lr": 2e-5, "grad_norm": 0.5, "tokens_per_s": 81234.4,
       "tokens_per_s_per_device": 10154.3, "peak_mem_gib": 41.25, "mfu": 0.387, "skipped_steps": 0}


def test_log_line_has_every_figure():
    assert fmt(ROW) == ("step 7/10 | loss 1.2346 | lr 2e-05 | grad_norm 0.500 | 81234 tok/s (10154/dev) | "
                        "mem 41.25 GiB | MFU 38.7%")


def test_skipped_steps_are_shown_once_there_are_any():
    assert fmt({**ROW, "skipped_steps": 2}).endswith("| 2 non-finite step(s) skipped")
    assert "MFU" not in fmt({**ROW, "mfu": None})
