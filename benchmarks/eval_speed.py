"""Seconds to compute the COCO bbox metrics of 5,000 images x 100 detections (synthetic), per backend.

    python benchmarks/eval_speed.py [--images 5000] [--dets 100] [--crowdhuman] [--out
    benchmarks/results/eval_speed.json]

Ground truth: ~7 objects per image over 80 categories with COCO-like sizes (one in 50 a crowd box); detections: a
noisy copy of most objects plus random boxes up to `--dets` per image. Timed: ground truth indexing, loadRes,
evaluate, accumulate and summarize, i.e. everything `evaluate_coco` does. `--crowdhuman` also times the CrowdHuman
metric on a one-class version with 500 detections per image.
"""
import argparse
import importlib.util
import os
import platform
import time

import numpy as np
from train_step import write_json

from date_jax.evaluation import coco_metrics, crowdhuman_metrics


def synthetic_coco(num_images: int, dets_per_image: int, num_classes: int, seed: int = 0):
    """(COCO ground-truth dict, COCO results list)."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        w_img, h_img = 640, 480
        images.append(dict(id=image_id, width=w_img, height=h_img, file_name=f"{image_id}.jpg"))
        n = int(rng.integers(1, 15))
        sizes = np.exp(rng.uniform(np.log(8), np.log(400), (n, 2)))
        xy = rng.uniform(0, 1, (n, 2)) * np.maximum([w_img, h_img] - sizes, 1)
        cats = rng.integers(1, num_classes + 1, n)
        for (x, y), (w, h), c in zip(xy, sizes, cats):
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=int(c),
                                    bbox=[float(x), float(y), float(w), float(h)], area=float(w * h),
                                    iscrowd=int(rng.uniform() < 0.02)))
        boxes = np.concatenate([xy, sizes], 1) + rng.normal(0, 0.1, (n, 4)) * np.concatenate([sizes, sizes], 1)
        labels = list(cats)
        extra = max(dets_per_image - n, 0)
        rand_wh = np.exp(rng.uniform(np.log(8), np.log(400), (extra, 2)))
        rand_xy = rng.uniform(0, 1, (extra, 2)) * np.maximum([w_img, h_img] - rand_wh, 1)
        boxes = np.concatenate([boxes, np.concatenate([rand_xy, rand_wh], 1)])
        labels += list(rng.integers(1, num_classes + 1, extra))
        scores = np.concatenate([rng.uniform(0.3, 1, n), rng.uniform(0, 0.6, extra)])
        for box, c, s in zip(boxes, labels, scores):
            detections.append(dict(image_id=image_id, category_id=int(c), score=float(s),
                                   bbox=[float(v) for v in np.maximum(box, [0, 0, 1, 1])]))
    categories = [dict(id=c, name=f"class{c}") for c in range(1, num_classes + 1)]
    return dict(images=images, annotations=annotations, categories=categories), detections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100)
    parser.add_argument("--crowdhuman", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                   "eval_speed.json"))
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}")
    gt, dets = synthetic_coco(args.images, args.dets, 80)
    print(f"COCO bbox metrics, {args.images} images x {args.dets} detections ({len(dets)} detections, "
          f"{len(gt['annotations'])} ground-truth boxes)")
    backends = ["pycocotools"] + (["faster_coco_eval"] if importlib.util.find_spec("faster_coco_eval") else [])
    results, seconds = {}, {}
    for backend in backends:
        start = time.perf_counter()
        results[backend] = coco_metrics.evaluate_coco(gt, dets, backend=backend)
        seconds[backend] = time.perf_counter() - start
        print(f"  {backend:18s} {seconds[backend]:7.2f} s   AP={results[backend]['AP']:.4f}")
    if len(results) == 2:
        worst = max(abs(results["pycocotools"][k] - results["faster_coco_eval"][k]) for k in coco_metrics.METRIC_NAMES)
        print(f"  largest difference between the backends over the 12 numbers: {worst:.2e}")
    else:
        print("  faster_coco_eval: not installed (pip install faster-coco-eval)")
    if args.crowdhuman:
        gt1, dets1 = synthetic_coco(args.images, 500, 1, seed=1)
        start = time.perf_counter()
        metrics = crowdhuman_metrics.evaluate_crowdhuman(gt1, dets1)
        seconds["crowdhuman"] = time.perf_counter() - start
        print(f"CrowdHuman metrics, {args.images} images x 500 detections: {seconds['crowdhuman']:.2f} s "
              f"({', '.join(f'{k}={v:.4f}' for k, v in metrics.items())})")
    write_json(dict(images=args.images, detections_per_image=args.dets, seconds=seconds,
                    ap={k: v["AP"] for k, v in results.items()}, cpu_count=os.cpu_count()), args.out)


if __name__ == "__main__":
    main()
