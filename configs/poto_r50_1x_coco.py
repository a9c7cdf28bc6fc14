"""Baseline: the one-to-one (POTO) branch alone, R50, COCO 1x - DATE without its one-to-many branch.

Run:      python train.py --config configs/poto_r50_1x_coco.py --workdir runs/poto_r50_1x
Hardware: 16 images per step (e.g. 8 GPUs x 2), bf16 on accelerators.
Expected: no seed-table row; DATE's claim is that this converges slower than DATE-R50-F (AP 37.3 at 12 epochs).
"""
from date_jax import config as config_lib


def get_config():
    config = config_lib.base_config()
    config.dtype = "bfloat16"
    config.model.o2m = "none"
    return config
