"""LoRA under AutoTP: every adapted layer split consistently with its base layer, before
deepspeed.initialize, with DeepSpeed's own tensor-parallel layers.

AutoTP replaces a module that has a 2-D `weight` as a whole; peft's LoRA wrapper exposes its base
layer's weight, so AutoTP would swap the wrapper, adapters and all, for a plain split linear layer. ds-tp
splits the adapted layers itself, from the same HuggingFace tp_plan the engine reads, and marks each
wrapper `replaced` so AutoTP leaves it (and splits every other layer as usual):

- column-parallel base (q/k/v/gate/up: output rows split): lora_A stays whole on every rank; lora_B is
  split by output rows like the base (a DeepSpeed LinearLayer). Its input all-reduces its gradient
  across the TP group in backward, so lora_A's gradient is the full sum on every rank.
- row-parallel base (o/down: input columns split, output all-reduced): lora_A is split by input columns
  (a DeepSpeed LinearAllreduce, whose all-reduce makes A(x) whole); lora_B stays whole on every rank.

Both pieces use the tp_meta and module name AutoTP would give the base layer, so the split sizes match.
The specs are the ones the engine's AutoTP applies: ds-tp's own layer specs where the family has them (the
DeepSpeed JSON's tensor_parallel.partition_config: Phi-3, GLM-4, OLMo-2), else the HuggingFace tp_plan. A
fused column-parallel layer (Phi-3 / GLM-4's gate_up_proj, gate and up split one sub-block at a time) has
its lora_B split by the same sub-blocks (DeepSpeed's SubParamLinearLayer), so each rank's adapter output
lines up with its base output.
"""
from __future__ import annotations


def split_lora_layers(model, mesh, partition_config: dict | None = None) -> int:
    """Split the LoRA layers of a peft model for the TP group; returns how many were split.
    partition_config: the DeepSpeed JSON's tensor_parallel.partition_config, where ds-tp set one."""
    from deepspeed.module_inject.autotp_config import AutoTPConfig, PartitionType
    from deepspeed.module_inject.layers import LinearAllreduce, LinearLayer, SubParamLinearLayer, set_autotp_mode
    from deepspeed.module_inject.tp_plan_converter import TPPlanConverter
    from deepspeed.module_inject.tp_shard import AutoTPMeta
    from deepspeed.runtime.tensor_parallel.config import _get_hf_tp_plan
    from deepspeed.utils import groups
    from peft.tuners.lora import LoraLayer

    groups._init_tp_mesh_device(tensor_model_parallel_size=mesh.layout.tp)  # no-op when TP x CP installed them
    group = groups.get_tensor_model_parallel_group()
    set_autotp_mode(training=True)
    base = model.get_base_model()
    specs = AutoTPConfig.from_dict(partition_config).layer_specs if partition_config else \
        TPPlanConverter.convert(_get_hf_tp_plan(base))
    if not specs:
        raise RuntimeError(f"{type(base).__name__} has no HuggingFace tp_plan: ds-tp splits LoRA layers by it")
    meta = AutoTPMeta.from_model_config(base.config)
    model_type = getattr(base.config, "model_type", None)
    split = 0
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        spec = next((s for s in specs if s.matches(name + ".weight", model_type)), None)
        module.replaced = True  # AutoTP: leave this wrapper (and the adapters inside it) to ds-tp
        if spec is None or spec.partition_type == PartitionType.SKIP:
            continue
        if spec.gather_output or (spec.shape is not None and spec.partition_type == PartitionType.ROW):
            raise RuntimeError(f"{name}: LoRA on a {spec.partition_type.value}-parallel layer with a gathered or "
                               "reshaped output is not implemented; leave it out of lora_target_modules")
        if spec.partition_type == PartitionType.ROW:
            module.base_layer = LinearAllreduce(module.base_layer, group, name=name, tp_meta=meta)
            for key in list(module.lora_A.keys()):
                module.lora_A[key] = LinearAllreduce(module.lora_A[key], group, name=name, tp_meta=meta)
                _same_split(name, module.base_layer.weight.shape[1], module.lora_A[key].weight.shape[1])
        else:
            def column(layer):
                if spec.shape is None:
                    return LinearLayer(layer, group, name=name, tp_meta=meta)
                return SubParamLinearLayer(layer, group, shape=spec.shape, partition_dim=spec.get_partition_dim(),
                                           name=name, tp_meta=meta)
            module.base_layer = column(module.base_layer)
            for key in list(module.lora_B.keys()):
                module.lora_B[key] = column(module.lora_B[key])
                _same_split(name, module.base_layer.weight.shape[0], module.lora_B[key].weight.shape[0])
        split += 1
    return split


def _same_split(name: str, base: int, lora: int) -> None:
    if base != lora:
        raise RuntimeError(f"{name}: the base layer's shard has {base} features and the adapter's {lora}")
