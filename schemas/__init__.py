"""JSON Schema data files for ds-tp (installed as the ds_tp.schemas package)."""
