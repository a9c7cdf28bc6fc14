"""The peer: torchvision's FCOS-R50-FPN train step and inference, at a given size and batch, on this machine's CPU.

    python benchmarks/peers/torchvision_fcos.py [--size 512 512] [--batch 2] [--steps 3]

Optional dependency (see benchmarks/README.md): torch + torchvision of matching versions. The model is
torchvision's FCOS-R50-FPN (`fcos_resnet50_fpn`'s parts) with random weights, 80 classes (+ the background slot
torchvision counts), `trainable_backbone_layers=3` and frozen BatchNorm (as DATE's `frozen_stages=1`), its own resize
pinned to the input size so no rescaling happens, and an AdamW step as DATE's recipe. torch uses as many threads as
this machine has cores (XLA's CPU backend does the same). `train_step.py --peer torchvision` and
`inference.py --peer torchvision` import `build_train_step` / `build_predict` from here and interleave the timings.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable

import numpy as np


def _torch():
    """Import torch/torchvision with a message saying how to install them."""
    try:
        import torch
        import torchvision
    except ImportError as error:
        raise SystemExit(f"the torchvision peer needs torch and torchvision ({error}); install them as "
                         "benchmarks/README.md says (pip install torch==2.14.1 torchvision==0.29.1)") from error
    torch.set_num_threads(os.cpu_count() or 1)
    return torch, torchvision


def _model(image_hw: tuple[int, int], num_classes: int):
    """FCOS-R50-FPN with random weights, frozen BatchNorm, stem + stage 1 frozen, resize pinned to `image_hw`.

    Built from torchvision's parts as `fcos_resnet50_fpn` does for pretrained weights: without weights that function
    falls back to trainable BatchNorm and every stage trainable, which is not the recipe DATE is compared with.
    """
    torch, torchvision = _torch()
    from torchvision.models import resnet50
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    torch.manual_seed(0)
    backbone = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(backbone, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return FCOS(backbone, num_classes + 1, min_size=min(image_hw), max_size=max(image_hw))


def _facts(torch, torchvision) -> dict[str, Any]:
    """Versions and threads of the peer run."""
    return dict(torch=torch.__version__, torchvision=torchvision.__version__, threads=torch.get_num_threads())


def synthetic_targets(batch: int, image_hw: tuple[int, int], num_gts: int, num_classes: int, seed: int = 0
                      ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """float images [B,3,H,W] in [0,1] and per image (boxes [G,4] xyxy, labels [G] in 1..C), 16-300 px boxes."""
    rng = np.random.default_rng(seed)
    h, w = image_hw
    images = rng.uniform(0, 1, (batch, 3, h, w)).astype(np.float32)
    targets = []
    for _ in range(batch):
        size = np.exp(rng.uniform(np.log(16), np.log(min(300, h, w) - 1), (num_gts, 2)))
        corner = rng.uniform(0, 1, (num_gts, 2)) * np.maximum([w, h] - size, 1)
        boxes = np.concatenate([corner, corner + size], -1).astype(np.float32)
        targets.append((boxes, rng.integers(1, num_classes + 1, num_gts).astype(np.int64)))
    return images, targets


def build_train_step(image_hw: tuple[int, int], batch: int, max_boxes: int, num_gts: int, num_classes: int
                     ) -> tuple[Callable[[], None], dict[str, Any]]:
    """A zero-argument callable running one torchvision FCOS train step (forward, loss, backward, AdamW), and facts."""
    torch, torchvision = _torch()
    model = _model(image_hw, num_classes).train()
    images, targets = synthetic_targets(batch, image_hw, min(num_gts, max_boxes), num_classes)
    image_list = [torch.from_numpy(x) for x in images]
    target_list = [dict(boxes=torch.from_numpy(b), labels=torch.from_numpy(c)) for b, c in targets]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)

    def run() -> None:
        losses = model(image_list, target_list)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        opt.step()

    return run, _facts(torch, torchvision)


def build_predict(image_hw: tuple[int, int], batch: int, num_classes: int) -> tuple[Callable[[], None], dict[str, Any]]:
    """A zero-argument callable running torchvision FCOS inference (network + its decode with NMS) on a batch."""
    torch, torchvision = _torch()
    model = _model(image_hw, num_classes).eval()
    images, _ = synthetic_targets(batch, image_hw, 1, num_classes)
    image_list = [torch.from_numpy(x) for x in images]

    def run() -> None:
        with torch.inference_mode():
            model(image_list)

    return run, _facts(torch, torchvision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    image_hw = tuple(args.size)
    train, facts = build_train_step(image_hw, args.batch, 32, 8, 80)
    predict, _ = build_predict(image_hw, 1, 80)
    for name, run in (("train step", train), ("predict batch 1", predict)):
        run()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        print(f"torchvision FCOS-R50-FPN {name} {image_hw[0]}x{image_hw[1]}: median {statistics.median(times):.3f} s "
              f"(min {min(times):.3f} s, {args.steps} runs; torch {facts['torch']}, {facts['threads']} threads)")


if __name__ == "__main__":
    main()
