"""Methods: each is a plug-in (model + targets + loss + post-processing + config), registered by name.

The names below load on first use: a method's torch-free inference half (`nucseg.methods.inference`) can be
imported without torch, which `nucseg.methods.base` (the training half) needs.
"""

from nucseg.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {name: "nucseg.methods.base" for name in (
    "Method", "Stage", "get_method", "list_methods", "register_method")})
