"""Baseline: the one-to-many FCOS branch alone, R50, COCO 1x, with NMS at test time (not end-to-end).

Run:      python train.py --config configs/fcos_r50_1x_coco.py --workdir runs/fcos_r50_1x
Hardware: 16 images per step (e.g. 8 GPUs x 2), bf16 on accelerators.
Expected: no seed-table row (same AdamW recipe as DATE; mmdetection's SGD FCOS-R50-caffe 1x reaches AP 36.6).
"""
from date_jax import config as config_lib


def get_config():
    config = config_lib.base_config()
    config.dtype = "bfloat16"
    config.model.o2o = "none"
    config.test.update(nms=True, nms_iou=0.5, nms_pre=1000, score_thr=0.05, max_per_img=100)
    return config
