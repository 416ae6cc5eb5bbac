"""The label value every loss skips (HF's and torch's ignore_index): prompts, padding and masked turns."""
IGNORE = -100
