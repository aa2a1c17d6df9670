"""Methods: each is a plug-in (model + targets + loss + post-processing + config), registered by name.

The names below load on first use: a method's torch-free inference half (`nucseg.methods.inference`) can be
imported without torch, which `nucseg.methods.base` (the training half) needs.
"""

_BASE = ("Method", "Stage", "get_method", "list_methods", "register_method")
__all__ = list(_BASE)


def __getattr__(name: str):
    if name in _BASE:
        from nucseg.methods import base

        return getattr(base, name)
    raise AttributeError(f"module 'nucseg.methods' has no attribute '{name}'")
