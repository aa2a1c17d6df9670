"""Models are created by name from a registry (`nucseg models` lists them)."""

from nucseg.models.registry import create, describe, list_models, register_model

__all__ = ["create", "describe", "list_models", "register_model"]
