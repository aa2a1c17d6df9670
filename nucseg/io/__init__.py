"""File input/output: images, label maps and result writers. Never imports torch."""

from nucseg.io.images import (
    IMAGE_EXTENSIONS,
    InputError,
    atomic_path,
    read_image,
    read_label,
    write_image,
    write_label,
    write_text,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "InputError",
    "atomic_path",
    "read_image",
    "read_label",
    "write_image",
    "write_label",
    "write_text",
]
