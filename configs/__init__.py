"""The recipes (`--config configs/asl.py[:variant]`, `configs/recall_surrogate.py`)
and the parts they share (`configs.common`). A package so that the recipe files,
which ml_collections loads by path, import `configs.common` by name."""
