"""Launching ranks: the deepspeed launcher (one machine, a hostfile, or per-node) or torchrun."""
