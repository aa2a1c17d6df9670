"""Readers, one module per annotation format, registered by name (`nucseg data convert --format NAME`)."""

from nucseg.data.readers import canonical, instance_lists, label_maps, xml_polygons  # noqa: F401  (registration)
from nucseg.data.readers.base import DESCRIPTIONS, READERS, get_reader, read_samples, register_reader

__all__ = ["DESCRIPTIONS", "READERS", "get_reader", "read_samples", "register_reader"]
