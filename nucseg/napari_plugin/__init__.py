"""nucseg in napari (npe2 plugin, `pip install nucseg[napari]`): the "Segment nuclei" dock widget, a reader for
`segment`'s label PNGs and `segment-slide`'s labels.zarr, and the sample images. napari.yaml is the manifest."""

import sys

# torch imports triton (its GPU kernel compiler) when it loads. Triton bundles its own LLVM, which segfaults when
# Mesa's LLVM is already loaded, as it is in a viewer drawing with software OpenGL (llvmpipe: VMs, remote desktops,
# Xvfb). nucseg's inference never compiles kernels, so in napari's process triton is made unimportable before torch
# loads; torch then reports it absent. A process that imported triton already keeps it.
if "triton" not in sys.modules and "torch" not in sys.modules:
    sys.modules["triton"] = None
