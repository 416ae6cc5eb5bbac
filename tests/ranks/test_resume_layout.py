"""A checkpoint resumes on another layout with its optimizer state (train/reshard.py, launch/resume.py): saved at
step 3 of 8 on layout A, resumed on layout B, AdamW's steps 4-8 log the losses of the uninterrupted run on A
within 1e-5, and the lr schedule continues; the global batch is kept by changing gradient_accumulation_steps."""
import pytest

from tests.ranks.harness import losses, train

ADAMW = ["--max-steps", "8", "--logging-steps", "1", "--sequence-len", "64", "--warmup-steps", "2",
         "--optimizer", "adamw_torch", "--learning-rate", "0.002", "--micro-batch-size", "2", "--save-steps", "3"]
DP2, DP1 = ["--dp-shard-size", "2"], ["--dp-shard-size", "1"]
TP2 = ["--dp-shard-size", "1", "--tensor-parallel-size", "2"]
CP2 = ["--dp-shard-size", "1", "--context-parallel-size", "2"]
TP2DP2 = ["--dp-shard-size", "2", "--tensor-parallel-size", "2"]
LORA = ["--adapter", "lora", "--lora-r", "4", "--lora-alpha", "8", "--lora-target-linear"]

CASES = {  # name: (layout A, world A, layout B, world B, extra, gas A, gas B (kept global batch))
    "dp_shard 2->1": (DP2, 2, DP1, 1, [], 1, 2),
    "dp_shard 1->2": (DP1, 1, DP2, 2, [], 2, 1),
    "tp 2->1": (TP2, 2, DP1, 1, [], 1, 1),
    "tp 1->2": (DP1, 1, TP2, 2, [], 1, 1),
    "tp2 x dp_shard2 -> dp_shard 2": (TP2DP2, 4, DP2, 2, [], 1, 1),
    "cp 2->1": (CP2, 2, DP1, 1, ["--micro-batch-size", "1"], 1, 1),  # CP with packing takes one row a micro-step
    "lora dp_shard 2->1": (DP2, 2, DP1, 1, LORA, 1, 2),
    # the fused gate_up_proj, split gate and up sub-block by sub-block under TP
    "phi3 tp 1->2": (DP1, 1, TP2, 2, ["--base-model", "builtin:tiny-phi3"], 1, 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resume_on_another_layout_continues_the_run(tmp_path, capfd, case):
    layout_a, world_a, layout_b, world_b, extra, gas_a, gas_b = CASES[case]
    gas = ["--gradient-accumulation-steps", str(gas_a)]
    a_rows = train(tmp_path / "A", [*ADAMW, *extra, *layout_a, *gas], world_a)
    assert (tmp_path / "A" / "checkpoint-3").is_dir()
    capfd.readouterr()
    b_rows = train(tmp_path / "B", [*ADAMW, *extra, *layout_b, *gas, "--resume-from-checkpoint",
                                    str(tmp_path / "A" / "checkpoint-3")], world_b)
    said = capfd.readouterr().out
    assert "their Adam moments (step 3)" in said, said[-3000:]
    if gas_b != gas_a:
        assert f"gradient_accumulation_steps {gas_a} -> {gas_b}" in said
    assert [r["step"] for r in b_rows if "loss" in r] == [4, 5, 6, 7, 8]
    want, got = losses(a_rows)[3:], losses(b_rows)
    assert max(abs(a - b) for a, b in zip(want, got)) < 1e-5, (want, got)
    assert [r["lr"] for r in b_rows if "loss" in r] == pytest.approx([r["lr"] for r in a_rows if "loss" in r][3:])
    assert want[-1] < losses(a_rows)[0]
