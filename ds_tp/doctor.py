"""`ds-tp doctor`: what this machine offers a run, and what would make a layout slow on it.

The report is lines of text. The parts that judge (the `nvidia-smi topo -m` parser and the
placement checks) are pure functions, so they are tested on canned matrices without a GPU.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "deepspeed", "transformers", "datasets", "peft", "bitsandbytes", "ds-tp")
ENV_PREFIXES = ("NCCL_", "MASTER_", "OMP_", "HF_")
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD")
# nvidia-smi's legend: PIX/PXB cross PCIe bridges, PHB a host bridge, NODE host bridges in one NUMA
# node, SYS the inter-socket link; NV# is a bonded set of # NVLinks.
PCIE_LINKS = {"PIX", "PXB", "PHB", "NODE", "SYS"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
GPU_LABEL = re.compile(r"^GPU(\d+)$")


@dataclass(frozen=True)
class Topology:
    """GPU-to-GPU links from `nvidia-smi topo -m`, by physical GPU index."""

    gpus: int
    links: dict  # (a, b) -> "NV18" | "PHB" | ...

    def link(self, a: int, b: int) -> str | None:
        return self.links.get((a, b))

    def kind(self, a: int, b: int) -> str:
        return link_kind(self.link(a, b) or "")


def link_kind(cell: str) -> str:
    """'nvlink', 'pcie', 'self' or 'unknown' for one cell of the matrix."""
    if re.fullmatch(r"NV\d+", cell):
        return "nvlink"
    if cell in PCIE_LINKS:
        return "pcie"
    return "self" if cell == "X" else "unknown"


def parse_topology(text: str) -> Topology | None:
    """The GPU block of `nvidia-smi topo -m`; None when the text has no GPU matrix.

    The header names GPU columns first (then NICs, CPU/NUMA affinity); every cell is one word, so
    whitespace splitting works for tab-separated output and for copies with tabs turned to spaces.
    """
    columns: list[int] = []
    links: dict = {}
    for raw in text.splitlines():
        words = ANSI.sub("", raw).split()
        if not words:
            continue
        if words[0].startswith("Legend"):
            break
        if not columns and GPU_LABEL.match(words[0]) and len(words) > 1 and GPU_LABEL.match(words[1]):
            for word in words:  # the header line: GPU0 GPU1 ... then other columns
                match = GPU_LABEL.match(word)
                if not match:
                    break
                columns.append(int(match[1]))
            continue
        row = GPU_LABEL.match(words[0])
        if columns and row and len(words) > len(columns):
            for column, cell in zip(columns, words[1:]):
                links[(int(row[1]), column)] = cell
    if not columns:
        return None
    return Topology(gpus=len(columns), links=links)


def topology_summary(topo: Topology) -> list[str]:
    pairs = [(a, b) for a in range(topo.gpus) for b in range(a + 1, topo.gpus)]
    slow = [f"GPU{a}-GPU{b} {topo.link(a, b)}" for a, b in pairs if topo.kind(a, b) == "pcie"]
    fast = sum(topo.kind(a, b) == "nvlink" for a, b in pairs)
    lines = [f"interconnect: {topo.gpus} GPUs, {fast} of {len(pairs)} pairs over NVLink, {len(slow)} over PCIe"]
    if slow:
        lines.append("  PCIe pairs: " + ", ".join(slow[:12]) + (" ..." if len(slow) > 12 else ""))
    return lines


def placement_warnings(tp: int, cp: int, gpus_per_host: dict[str, int], topo: Topology | None = None,
                       visible: list[int] | None = None) -> list[str]:
    """TP/CP groups that would cross hosts, and TP groups whose GPUs talk over PCIe.

    Ranks are placed as translators/layout.py orders them: a TP group is tp consecutive local
    ranks; local rank r runs on visible[r] (CUDA_VISIBLE_DEVICES), the matrix's physical index.
    """
    group = tp * cp
    found = []
    for host, slots in gpus_per_host.items():
        if group > slots:
            found.append(f"TP/CP groups would cross hosts: tp({tp}) x cp({cp}) = {group} > {slots} GPUs on {host}")
        elif slots % group:
            found.append(f"TP/CP groups would cross hosts: {slots} GPUs on {host} is not a multiple of "
                         f"tp({tp}) x cp({cp}) = {group}")
    if topo is None or tp < 2:
        return found
    local = len(visible) if visible else topo.gpus
    physical = visible or list(range(topo.gpus))
    slow = []
    for start in range(0, local - tp + 1, tp):  # groups of tp consecutive local ranks
        ranks = physical[start:start + tp]
        slow += [f"GPU{a}-GPU{b} {topo.link(a, b)}" for i, a in enumerate(ranks) for b in ranks[i + 1:]
                 if topo.kind(a, b) == "pcie"]
    if slow:
        found.append("TP over PCIe: slow, check topology (" + ", ".join(slow[:6]) + (" ..." if len(slow) > 6 else "")
                     + "); put each TP group on NVLink-connected GPUs or lower tensor_parallel_size")
    return found


def environment_lines(environ: dict) -> list[str]:
    names = sorted(k for k in environ if k.startswith(ENV_PREFIXES))
    if not names:
        return ["environment: no " + ", ".join(p + "*" for p in ENV_PREFIXES) + " variables set"]
    hidden = lambda k: any(w in k for w in SECRET_WORDS)  # noqa: E731  (HF_TOKEN must not be printed)
    return ["environment:"] + [f"  {k}={'<set, hidden>' if hidden(k) else environ[k]}" for k in names]


def visible_devices(environ: dict) -> list[int] | None:
    """CUDA_VISIBLE_DEVICES as physical indices, when it is a list of integers (not UUIDs)."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return [int(v) for v in items] if all(v.isascii() and v.isdigit() for v in items) else None


def version_lines() -> list[str]:
    lines = [f"python: {platform.python_version()} ({sys.executable})"]
    for name in PACKAGES:
        try:
            lines.append(f"{name}: {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{name}: not installed")
    return lines


def accelerator_lines() -> tuple[list[str], int]:
    """(report lines, local GPU count) from torch, as each rank would see it."""
    try:
        from ds_tp.device import probe_with_torch
        facts = probe_with_torch()
    except Exception as exc:  # a broken torch install is a finding here, not a crash
        return [f"accelerator: cannot ask torch ({type(exc).__name__}: {exc})"], 0
    if facts["accelerator"] != "cuda":
        return ["accelerator: no GPU (torch sees no CUDA device): training would run CPU ranks over gloo"], 0
    import torch
    lines = [f"accelerator: {facts['count']} CUDA GPU(s), CUDA {torch.version.cuda}, bf16 {facts['bf16']}"]
    for index in range(facts["count"]):
        props = torch.cuda.get_device_properties(index)
        lines.append(f"  cuda:{index} {props.name}, {props.total_memory / 2**30:.1f} GiB, "
                     f"compute capability {props.major}.{props.minor}")
    return lines, facts["count"]


def read_topology() -> tuple[list[str], Topology | None]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return ["interconnect: nvidia-smi not found (no NVIDIA driver here)"], None
    try:
        text = subprocess.run([smi, "topo", "-m"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return [f"interconnect: nvidia-smi topo -m failed ({exc})"], None
    topo = parse_topology(text)
    if topo is None:
        return ["interconnect: no GPU matrix in nvidia-smi topo -m"], None
    return topology_summary(topo), topo


def model_lines(cfg) -> list[str]:
    """The model's family and shape as ds-tp reads them (MoE experts, tied head) and its TP rule."""
    from ds_tp.errors import UserError
    from ds_tp.model_config import planning_shape_source
    from ds_tp.translators.family_rules import partition_config, tp_problem
    from ds_tp.translators.model_shape import ModelShape

    try:
        values, source = planning_shape_source(cfg)
        shape = ModelShape.from_config(values, source)
    except UserError as exc:
        return [f"model: shape not known here ({str(exc).splitlines()[0]})"]
    moe = f", MoE {shape.experts} experts ({shape.experts_per_token} a token)" if shape.experts else ""
    size = f"{shape.params / 1e9:.2f}B" if shape.params >= 1e8 else f"{shape.params / 1e6:.2f}M"
    line = (f"model: {shape.model_type or 'unknown family'}, {size} parameters"
            f"{moe}{', tied embeddings' if shape.tied else ''} ({source})")
    why = tp_problem(shape)
    rule = (f"refused ({why})" if why else "splits by ds-tp's layer specs (translators/family_rules.py)"
            if partition_config(shape) else "follows the model's HuggingFace tp_plan")
    return [line, f"model: tensor parallelism {rule}"]


def doctor_report(config: Path | None, overrides: list[str], hostfile: Path | None,
                  plugin_modules: tuple = ()) -> list[str]:
    """Every line of the report; raises UserError for a bad CONFIG or hostfile (checked first)."""
    cfg = hosts = None
    if config is not None:
        from ds_tp.config import load_config
        cfg = load_config(config, overrides, None, plugin_modules)
    if hostfile is not None:
        from ds_tp.launch.hostfile import parse_hostfile
        hosts = {h.name: h.slots for h in parse_hostfile(hostfile)}
    lines = version_lines()
    accel, count = accelerator_lines()
    topo_lines, topo = read_topology()
    lines += accel + topo_lines + environment_lines(dict(os.environ))
    warnings = []
    if cfg is not None:
        layout = cfg.layout
        lines.append(f"config: {config}: tp {layout.tp}, cp {layout.cp} ({layout.product()})")
        lines += model_lines(cfg)
        per_host = hosts or ({"this machine": count} if count else {})
        if not per_host:
            lines.append("config: no GPU here and no --hostfile: TP/CP placement not checked")
        warnings = placement_warnings(layout.tp, layout.cp, per_host, topo, visible_devices(dict(os.environ)))
    elif hosts:
        lines.append("hostfile: " + ", ".join(f"{h} ({s} slots)" for h, s in hosts.items()))
    lines += [f"warning: {w}" for w in warnings]
    lines.append(f"{len(warnings)} warning(s)" if cfg is not None else "no CONFIG given: placement not checked")
    return lines
