"""ds-tp: DeepSpeed-backed training of HuggingFace causal LMs from Axolotl-style YAML."""

__version__ = "0.1.0"
