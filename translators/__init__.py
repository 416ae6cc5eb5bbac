"""Pure translation from a validated ds-tp config to a parallel layout and a DeepSpeed config.

Installed as ds_tp.translators. Nothing here imports torch, deepspeed or transformers, touches
files or the network: dict in, dict out, so `validate` and `translate` start fast.
"""
