"""The engine shared by every method: configs, training loop (DDP under torchrun), inference and tiling."""
