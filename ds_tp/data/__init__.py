"""Dataset preparation: config `datasets:` -> tokenized, packed rows cached on disk.

prepare_datasets runs once in the launching process; every rank then calls load_prepared.
"""
from ds_tp.data.prepare import PreparedData, load_prepared, prepare_datasets
from ds_tp.data.prompts import IGNORE, alpaca_prompt

__all__ = ["IGNORE", "PreparedData", "alpaca_prompt", "load_prepared", "prepare_datasets"]
