"""PyTorch on the same architecture, for the ratio printed beside `cargo bench -p s3-trainer
--bench model`. Needs the reference implementation (uni-medical/SAM-Med3D) on PYTHONPATH
and `pip install torch`; run by hand:

    python trainer/bench/torch_model.py [vit_b_ori|small]

Forward+backward of one 128³ sample on CPU, batch 1, one point prompt, as the Rust bench.
"""

import sys
import time

import torch
from segment_anything.build_sam3D import sam_model_registry3D

preset = sys.argv[1] if len(sys.argv) > 1 else "vit_b_ori"
torch.manual_seed(0)
if preset == "vit_b_ori":
    model = sam_model_registry3D["vit_b_ori"](checkpoint=None)
else:
    raise SystemExit("build the small preset with the reference's _build_sam3D_ori(encoder_embed_dim=96, depth=2, heads=4, global=[1])")
model.train()
image = torch.randn(1, 1, 128, 128, 128)
coords = torch.tensor([[[64.0, 64.0, 64.0]]])
labels = torch.tensor([[1]])


def step():
    emb = model.image_encoder(image)
    sparse, dense = model.prompt_encoder(points=[coords, labels], boxes=None, masks=None)
    low, _ = model.mask_decoder(image_embeddings=emb, image_pe=model.prompt_encoder.get_dense_pe(),
                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
    loss = low.square().mean()
    loss.backward()


step()
n = 1
t = time.perf_counter()
for _ in range(n):
    step()
rate = n / (time.perf_counter() - t)
print(f"torch {preset}: {rate:.3f} samples/s ({1 / rate:.2f} s/sample), {torch.get_num_threads()} threads")
