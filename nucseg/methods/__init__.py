"""Methods: each is a plug-in (model + targets + loss + post-processing + config), registered by name."""

from nucseg.methods.base import Method, Stage, get_method, list_methods, register_method

__all__ = ["Method", "Stage", "get_method", "list_methods", "register_method"]
