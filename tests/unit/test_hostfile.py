"""Hostfiles are checked before launch, each problem one line naming the hostfile line."""
import pytest

from ds_tp.errors import UserError
from ds_tp.launch.hostfile import check_hosts_fit_layout, parse_hostfile


def test_parse_with_comments(tmp_path):
    path = tmp_path / "hf"
    path.write_text("# cluster\nnode-a slots=8  # first\n\nnode-b slots=8\n")
    assert [(h.name, h.slots, h.line) for h in parse_hostfile(path)] == [("node-a", 8, 2), ("node-b", 8, 4)]


@pytest.mark.parametrize("text, needle", [
    ("node-a slots=8\nnode-a slots=8\n", ":2: duplicate host 'node-a' (first on line 1)"),
    ("node-a 8\n", ":1: expected 'host slots=N'"),
    ("node-a slots=zero\n", ":1: slots must be a positive integer"),
    ("node-a slots=0\n", ":1: slots must be a positive integer"),
    ("# nothing\n", "no hosts in hostfile"),
])
def test_bad_hostfiles(tmp_path, text, needle):
    path = tmp_path / "hf"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        parse_hostfile(path)
    assert needle in str(info.value) and len(info.value.problems) == 1


def test_tp_cp_groups_must_fit_in_a_host(tmp_path):
    path = tmp_path / "hf"
    path.write_text("a slots=8\nb slots=6\n")
    hosts = parse_hostfile(path)
    check_hosts_fit_layout(path, hosts, tp=2, cp=1)
    with pytest.raises(UserError) as info:
        check_hosts_fit_layout(path, hosts, tp=4, cp=1)
    assert f"{path}:2: host 'b' has 6 slots, not a multiple of tp(4) x cp(1) = 4" in str(info.value)


def test_binary_and_missing(tmp_path):
    path = tmp_path / "hf"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match="not UTF-8"):
        parse_hostfile(path)
    with pytest.raises(UserError, match="no such hostfile"):
        parse_hostfile(tmp_path / "none")


def test_symlinked_output_is_never_written_through(tmp_path):
    """fault: output_dir holds a symlink where ds-tp writes (metrics.jsonl -> a file elsewhere)
    does: refused before anything is written
    lost: nothing: the link's target is untouched"""
    from ds_tp.launch.prepare import check_output_dir
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").symlink_to(target)
    with pytest.raises(UserError, match="symlinks where ds-tp writes"):
        check_output_dir(out, resuming=True, overwrite=True)
    assert target.read_text() == "precious"


def test_hostfile_launch_leaves_the_master_address_to_deepspeed(tmp_path):
    """Without --main-process-ip, a hostfile launch must not pin every host to its own loopback; only pdsh
    skips DeepSpeed's ssh check (ds-tp checked every host itself)."""
    from ds_tp.launch.command import LaunchSpec, launcher_command

    spec = LaunchSpec(launcher="deepspeed", world=2, num_machines=1, machine_rank=None, master_addr=None,
                      master_port=29500, hostfile=str(tmp_path / "hostfile"), runner="pdsh")
    cmd = launcher_command(spec, "run.json", tmp_path)
    assert "--master_addr" not in cmd and "--no_ssh_check" in cmd
    spec.runner, spec.master_addr = "openmpi", "10.0.0.1"
    cmd = launcher_command(spec, "run.json", tmp_path)
    assert "--no_ssh_check" not in cmd and cmd[cmd.index("--master_addr") + 1] == "10.0.0.1"


def test_carried_environment_file_is_private(tmp_path):
    """The env file the deepspeed runner reads holds HF_TOKEN: created 0600, never readable by others."""
    import stat

    from ds_tp.launch.train import carry_environment

    path = carry_environment({"HF_TOKEN": "hf_x", "HOME": "/root", "NCCL_DEBUG": "INFO"}, tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "HF_TOKEN=hf_x\nNCCL_DEBUG=INFO\n"
