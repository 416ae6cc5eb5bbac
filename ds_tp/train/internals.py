"""Every touch of a DeepSpeed, transformers or torch attribute that is not public API, in one place.

Each function says why ds-tp needs it. RELIED_ON lists (module, dotted attribute) pairs that must
exist in the installed versions; tests/unit/test_internals.py checks them, so an upgrade that
renames one fails in one test instead of somewhere inside a rank.
"""
from __future__ import annotations

# Instance attributes (set in __init__) are listed as "Class.self.name": their class must assign them.
RELIED_ON = [
    ("deepspeed.ops", "__compatible_ops__"),
    ("deepspeed.runtime.engine", "DeepSpeedEngine.self.enable_backward_allreduce"),
    ("deepspeed.runtime.config", "DeepSpeedConfig.self.gradient_clipping"),
    ("deepspeed.utils.groups", "_TENSOR_MODEL_PARALLEL_GROUP"),
    ("deepspeed.utils.groups", "_MODEL_PARALLEL_GROUP"),
    ("deepspeed.utils.groups", "_DATA_PARALLEL_GROUP"),
    ("deepspeed.utils.groups", "mesh_device"),
    ("deepspeed.runtime.sequence_parallel.parallel_state_sp", "_SEQUENCE_PARALLEL_GROUP"),
    ("deepspeed.runtime.sequence_parallel.parallel_state_sp", "_SEQUENCE_DATA_PARALLEL_GROUP"),
    ("deepspeed.runtime.sequence_parallel.parallel_state_sp", "initialize_sequence_parallel"),
    ("deepspeed.module_inject.layers", "GatherReplacedLayerParams"),
    ("transformers.configuration_utils", "PretrainedConfig._attn_implementation"),
    ("torch.nn", "Module.self._non_persistent_buffers_set"),
]


def missing_attributes() -> list[str]:
    """RELIED_ON entries the installed libraries no longer have."""
    import importlib
    import inspect

    missing = []
    for module, dotted in RELIED_ON:
        target = importlib.import_module(module)
        owner, _, instance = dotted.partition(".self.")
        gone = object()
        for part in owner.split("."):
            target = getattr(target, part, gone)
            if target is gone:
                break
        if target is gone or (instance and f"self.{instance}" not in inspect.getsource(target)
                              and f"'{instance}'" not in inspect.getsource(target)):
            missing.append(f"{module}.{dotted}")
    return missing


def skip_shm_comm_build() -> None:
    """DeepSpeed JIT-compiles a shared-memory comm op (~24 s of g++) at init; training never uses it."""
    import deepspeed
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def disable_backward_allreduce(engine) -> None:
    """One replica: DeepSpeed would still flatten every gradient into buckets and all-reduce them over a
    group of one (10 ms a step on the CPU benchmark)."""
    engine.enable_backward_allreduce = False


def gradient_clipping(engine) -> float:
    return engine._config.gradient_clipping


def set_gradient_clipping(engine, value: float) -> None:
    """The engine reads its clipping threshold from its config at every step; StepGuard turns it off
    where it clips itself, and for a skipped step (clip_grad_norm_ fails on an empty gradient list)."""
    engine._config.gradient_clipping = value


def install_parallel_groups(tp_group, sp_group, seq_dp_group, mesh_device) -> None:
    """TP x CP (train/mesh_tp_cp.py): hand ds-tp's orthogonal groups to AutoTP (it skips building its
    own mesh when these globals are set) and to Ulysses, whose group initialiser would assert they
    are unset."""
    from deepspeed.runtime.sequence_parallel import parallel_state_sp
    from deepspeed.utils import groups

    groups._TENSOR_MODEL_PARALLEL_GROUP = tp_group
    groups._MODEL_PARALLEL_GROUP = tp_group
    groups._DATA_PARALLEL_GROUP = seq_dp_group
    groups.mesh_device = mesh_device
    parallel_state_sp._SEQUENCE_PARALLEL_GROUP = sp_group
    parallel_state_sp._SEQUENCE_DATA_PARALLEL_GROUP = seq_dp_group
    parallel_state_sp.initialize_sequence_parallel = lambda sequence_parallel_size: None


def set_attn_implementation(config, attn: str) -> None:
    """A config object handed to Ulysses' register_with_transformers names the attention it wraps."""
    config._attn_implementation = attn


def persistent_buffer_names(module) -> set[str]:
    """Buffers a state dict holds (torch keeps the others in a private set)."""
    return {name for name, buf in module.named_buffers(recurse=False)
            if buf is not None and name not in module._non_persistent_buffers_set}


def gather_tp_params(params, module, enabled: bool):
    """AutoTP's context manager that gathers a replaced layer's shards (no public equivalent)."""
    from deepspeed.module_inject.layers import GatherReplacedLayerParams
    return GatherReplacedLayerParams(params, module, enabled=enabled)
