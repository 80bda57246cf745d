"""PyTorch on the same architecture, for the ratio printed beside `cargo bench -p s3-trainer
--bench model`. Needs the reference implementation (uni-medical/SAM-Med3D) on PYTHONPATH
and `pip install torch numpy`; run by hand:

    PYTHONPATH=/path/to/SAM-Med3D python trainer/bench/torch_model.py [vit_b_ori|small]

Forward+backward of one 128³ sample on CPU, batch 1, as `s3-train bench step` does it:
CLICKS=N decoder passes (default 1), each with the 128³ upsampling and the Dice+BCE loss.
Prints the trainable parameter count (compare with `s3-train info --preset PRESET`) and
torch.get_num_threads() (set OMP_NUM_THREADS / torch.set_num_threads to match the Rust run).
DEVICE=cuda runs it on the GPU (tests/gpu/run.sh does, beside `s3-train --device cuda bench
model --clicks 1`); STEPS=N times N steps after the warm-up (default 1).
"""

import os
import sys
import time
from functools import partial

import torch
from segment_anything.build_sam3D import sam_model_registry3D
from segment_anything.modeling import (ImageEncoderViT3D, MaskDecoder3D, PromptEncoder3D, Sam3D,
                                       TwoWayTransformer3D)


def build_small():
    """The Rust `small` preset, built from the reference classes the way `_build_sam3D_ori`
    builds vit_b_ori: img 128, patch 16, embed 96, depth 2, heads 4, global [1], window 8,
    out_chans 48, mask_in_chans 16, 3 multimask outputs, IoU head hidden 32, two-way
    transformer depth 2 / 8 heads / mlp_dim 256."""
    prompt_embed_dim = 48
    image_size = 128
    vit_patch_size = 16
    image_embedding_size = image_size // vit_patch_size
    mask_decoder = MaskDecoder3D(
        num_multimask_outputs=3,
        transformer_dim=prompt_embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=32,
    )
    # The reference MaskDecoder3D takes no `transformer` argument: it always builds
    # TwoWayTransformer3D(depth=2, mlp_dim=2048, num_heads=8); swap in the preset's one.
    mask_decoder.transformer = TwoWayTransformer3D(
        depth=2,
        embedding_dim=prompt_embed_dim,
        mlp_dim=256,
        num_heads=8,
    )
    sam = Sam3D(
        image_encoder=ImageEncoderViT3D(
            depth=2,
            embed_dim=96,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=4,
            patch_size=vit_patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[1],
            window_size=8,
            out_chans=prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder3D(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(image_embedding_size, image_embedding_size, image_embedding_size),
            input_image_size=(image_size, image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=mask_decoder,
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    return sam


PRESETS = {
    "vit_b_ori": lambda: sam_model_registry3D["vit_b_ori"](checkpoint=None),
    "small": build_small,
}

preset = sys.argv[1] if len(sys.argv) > 1 else "vit_b_ori"
if preset not in PRESETS:
    raise SystemExit(f"usage: torch_model.py [{'|'.join(PRESETS)}]")
torch.manual_seed(0)
device = torch.device(os.environ.get("DEVICE", "cpu"))
model = PRESETS[preset]().to(device)
n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
print(f"torch {preset}: {n_params} trainable parameters, {torch.get_num_threads()} threads", flush=True)
model.train()
image = torch.randn(1, 1, 128, 128, 128, device=device)
# The Rust bench's phantom: a sphere "organ" (radius 0.15 of the side) as the target.
grid = torch.stack(torch.meshgrid(*[torch.arange(128.0)] * 3, indexing="ij"))
centre = torch.tensor([64.0, 64.0 * 0.8, 64.0 * 1.1]).view(3, 1, 1, 1)
target = (((grid - centre) ** 2).sum(0).sqrt() < 128 * 0.15).float()[None, None].to(device)
coords = torch.tensor([[[64.0, 64.0, 64.0]]], device=device)
labels = torch.tensor([[1]], device=device)
# Decoder passes per sample, as `s3-train bench step --clicks N`: the last pass gets no
# point, each pass the previous low-res logits; the loss of every pass is MONAI's
# DiceCELoss(sigmoid=True, squared_pred=True) on the logits upsampled to 128³
# (trilinear, align_corners=False), written out so MONAI need not be installed.
CLICKS = int(os.environ.get("CLICKS", "1"))


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def dice_ce(logits, t):
    p = torch.sigmoid(logits).flatten(1)
    tf = t.flatten(1)
    dice = 1 - (2 * (p * tf).sum(1) + 1e-5) / (p.square().sum(1) + tf.square().sum(1) + 1e-5)
    return dice.mean() + torch.nn.functional.binary_cross_entropy_with_logits(logits, t)


def step():
    emb = model.image_encoder(image)
    low = torch.zeros(1, 1, 32, 32, 32, device=device)
    total = 0
    for k in range(CLICKS):
        points = None if k + 1 == CLICKS else [coords, labels]
        sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=low)
        low, _ = model.mask_decoder(image_embeddings=emb, image_pe=model.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=False)
        full = torch.nn.functional.interpolate(low, size=(128, 128, 128), mode="trilinear", align_corners=False)
        total = total + dice_ce(full, target)
    total.backward()


step()
sync()
n = int(os.environ.get("STEPS", "1"))
t = time.perf_counter()
for _ in range(n):
    step()
sync()
rate = n / (time.perf_counter() - t)
where = f"{device}" if device.type == "cuda" else f"{torch.get_num_threads()} threads"
print(f"torch {preset}: {rate:.3f} samples/s ({1 / rate:.2f} s/sample), {where}")
