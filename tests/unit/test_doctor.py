"""`ds-tp doctor`: the nvidia-smi topology parser and placement checks on canned matrices, and the
command itself on this machine (no GPU)."""
from ds_tp.doctor import environment_lines, link_kind, parse_topology, placement_warnings, visible_devices
from tests.conftest import CARD
from tests.unit.test_cli import run

# `nvidia-smi topo -m` on an 8 x H100 SXM node (NVSwitch: every pair 18 NVLinks), as printed: tabs,
# NIC columns after the GPUs, an empty NUMA cell, then the legend.
DGX_H100 = """\
\tGPU0\tGPU1\tGPU2\tGPU3\tGPU4\tGPU5\tGPU6\tGPU7\tNIC0\tNIC1\tNIC2\tNIC3\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID
GPU0\t X \tNV18\tNV18\tNV18\tNV18\tNV18\tNV18\tNV18\tPIX\tSYS\tSYS\tSYS\t0-55,112-167\t0\t\tN/A
GPU1\tNV18\t X \tNV18\tNV18\tNV18\tNV18\tNV18\tNV18\tSYS\tPIX\tSYS\tSYS\t0-55,112-167\t0\t\tN/A
GPU2\tNV18\tNV18\t X \tNV18\tNV18\tNV18\tNV18\tNV18\tSYS\tSYS\tSYS\tSYS\t0-55,112-167\t0\t\tN/A
GPU3\tNV18\tNV18\tNV18\t X \tNV18\tNV18\tNV18\tNV18\tSYS\tSYS\tSYS\tSYS\t0-55,112-167\t0\t\tN/A
GPU4\tNV18\tNV18\tNV18\tNV18\t X \tNV18\tNV18\tNV18\tSYS\tSYS\tPIX\tSYS\t56-111,168-223\t1\t\tN/A
GPU5\tNV18\tNV18\tNV18\tNV18\tNV18\t X \tNV18\tNV18\tSYS\tSYS\tSYS\tPIX\t56-111,168-223\t1\t\tN/A
GPU6\tNV18\tNV18\tNV18\tNV18\tNV18\tNV18\t X \tNV18\tSYS\tSYS\tSYS\tSYS\t56-111,168-223\t1\t\tN/A
GPU7\tNV18\tNV18\tNV18\tNV18\tNV18\tNV18\tNV18\t X \tSYS\tSYS\tSYS\tSYS\t56-111,168-223\t1\t\tN/A
NIC0\tPIX\tSYS\tSYS\tSYS\tSYS\tSYS\tSYS\tSYS\t X \tSYS\tSYS\tSYS
NIC1\tSYS\tPIX\tSYS\tSYS\tSYS\tSYS\tSYS\tSYS\tSYS\t X \tSYS\tSYS
NIC2\tSYS\tSYS\tSYS\tSYS\tPIX\tSYS\tSYS\tSYS\tSYS\tSYS\t X \tSYS
NIC3\tSYS\tSYS\tSYS\tSYS\tSYS\tPIX\tSYS\tSYS\tSYS\tSYS\tSYS\t X

Legend:

  X    = Self
  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)
  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node
  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)
  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)
  PIX  = Connection traversing at most a single PCIe bridge
  NV#  = Connection traversing a bonded set of # NVLinks

NIC Legend:

  NIC0: mlx5_0
  NIC1: mlx5_1
  NIC2: mlx5_2
  NIC3: mlx5_3
"""

# A PCIe workstation: two pairs joined by NVLink bridges (NV4), the rest over the host bridge within
# a socket (PHB) or across sockets (SYS); copied from a terminal, so tabs became spaces.
PCIE_BOX = """\
        GPU0    GPU1    GPU2    GPU3    CPU Affinity    NUMA Affinity   GPU NUMA ID
GPU0     X      NV4     PHB     SYS     0-15,32-47      0               N/A
GPU1    NV4      X      PHB     SYS     0-15,32-47      0               N/A
GPU2    PHB     PHB      X      NV4     16-31,48-63     1               N/A
GPU3    SYS     SYS     NV4      X      16-31,48-63     1               N/A

Legend:

  X    = Self
  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)
  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)
  NV#  = Connection traversing a bonded set of # NVLinks
"""


def test_parse_nvlink_node():
    topo = parse_topology(DGX_H100)
    assert topo.gpus == 8 and len(topo.links) == 64
    assert topo.link(0, 7) == "NV18" and topo.link(3, 3) == "X"
    assert all(topo.kind(a, b) == "nvlink" for a in range(8) for b in range(8) if a != b)


def test_parse_pcie_box_with_spaces():
    topo = parse_topology(PCIE_BOX)
    assert topo.gpus == 4
    assert [topo.link(0, b) for b in range(4)] == ["X", "NV4", "PHB", "SYS"]
    assert topo.kind(0, 1) == "nvlink" and topo.kind(0, 2) == "pcie" and topo.kind(1, 3) == "pcie"


def test_parse_nothing_and_colour_codes():
    assert parse_topology("") is None and parse_topology("No devices were found\n") is None
    coloured = DGX_H100.replace("\tGPU0\tGPU1", "\t\x1b[4mGPU0\x1b[0m\tGPU1", 1)
    assert parse_topology(coloured).gpus == 8


def test_link_kinds():
    assert [link_kind(c) for c in ("NV12", "PIX", "PXB", "PHB", "NODE", "SYS", "X", "N/A")] == \
        ["nvlink", "pcie", "pcie", "pcie", "pcie", "pcie", "self", "unknown"]


def test_tp_over_nvlink_is_fine_and_over_pcie_warned():
    assert placement_warnings(8, 1, {"node": 8}, parse_topology(DGX_H100)) == []
    box = parse_topology(PCIE_BOX)
    assert placement_warnings(2, 1, {"box": 4}, box) == []  # [0, 1] and [2, 3] sit on NVLink bridges
    found = placement_warnings(4, 1, {"box": 4}, box)
    assert len(found) == 1 and found[0].startswith("TP over PCIe: slow, check topology (GPU0-GPU2 PHB")
    # CUDA_VISIBLE_DEVICES=1,2: local ranks 0, 1 run on physical GPUs 1 and 2 (PHB)
    assert "GPU1-GPU2 PHB" in placement_warnings(2, 1, {"box": 2}, box, visible=[1, 2])[0]


def test_groups_crossing_hosts():
    found = placement_warnings(8, 2, {"node-a": 8, "node-b": 8})
    assert found == [f"TP/CP groups would cross hosts: tp(8) x cp(2) = 16 > 8 GPUs on {h}" for h in ("node-a",
                                                                                                      "node-b")]
    assert "not a multiple" in placement_warnings(4, 1, {"odd": 6})[0]
    assert placement_warnings(2, 2, {"node": 8}) == []


def test_environment_hides_secrets():
    lines = environment_lines({"NCCL_DEBUG": "INFO", "HF_TOKEN": "hf_abc", "PATH": "/bin", "OMP_NUM_THREADS": "1"})
    assert lines == ["environment:", "  HF_TOKEN=<set, hidden>", "  NCCL_DEBUG=INFO", "  OMP_NUM_THREADS=1"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "2,3"}) == [2, 3]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "GPU-1a2b"}) is None and visible_devices({}) is None


def test_doctor_on_this_machine(tmp_path):
    p = run("doctor")
    assert p.returncode == 0, p.stderr
    for needle in ("python: 3.", "torch: ", "deepspeed: ", "transformers: ", "datasets: ", "ds-tp: "):
        assert needle in p.stdout
    import torch
    assert ("accelerator: no GPU" in p.stdout) == (not torch.cuda.is_available()), p.stdout
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\n")
    p = run("doctor", CARD / "minimal-tp.yaml", "--hostfile", hostfile)
    assert p.returncode == 0, p.stderr
    assert "warning: TP/CP groups would cross hosts: tp(2) x cp(1) = 2 > 1 GPUs on node-a" in p.stdout


def test_doctor_user_errors_are_one_line(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=many\n")
    p = run("doctor", "--hostfile", hostfile)
    assert p.returncode == 2 and p.stderr.strip() == (f"error: {hostfile}:1: slots must be a positive integer, "
                                                      "got 'many'")
    p = run("doctor", "--max-steps", "2")
    assert p.returncode == 2
    assert p.stderr.strip() == "error: command line: --max-steps: overrides need a CONFIG before them"


def test_doctor_names_the_family_and_its_tensor_parallel_rule(write_config):
    from ds_tp.doctor import doctor_report

    path = write_config("base_model: builtin:tiny-qwen3-moe\nlearning_rate: 1e-3\nmicro_batch_size: 1\n"
                        "gradient_accumulation_steps: 1\n")
    lines = [x for x in doctor_report(path, [], None) if x.startswith("model:")]
    assert lines[0].startswith("model: qwen3_moe, 0.14M parameters, MoE 4 experts (2 a token)")
    assert lines[1] == "model: tensor parallelism follows the model's HuggingFace tp_plan"
    gpt = write_config("base_model: builtin:tiny-gpt-oss\nlearning_rate: 1e-3\nmicro_batch_size: 1\n"
                       "gradient_accumulation_steps: 1\n", "g.yaml")
    assert any(x.startswith("model: tensor parallelism refused (gpt_oss models cannot be split")
               for x in doctor_report(gpt, [], None))
