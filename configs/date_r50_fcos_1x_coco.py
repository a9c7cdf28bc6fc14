"""DATE-R50-F, COCO, 12 epochs (1x): POTO one-to-one branch + FCOS one-to-many branch.

Run:      python train.py --config configs/date_r50_fcos_1x_coco.py --workdir runs/date_r50_fcos_1x
Hardware: 16 images per step (e.g. 8 GPUs x 2 or one TPU v4-8), bf16 on accelerators.
Expected (seed table): AP 37.3, AP50 55.3, AP75 40.7, APs 21.2, APm 40.3, APl 48.8.
"""
from date_jax import config as config_lib


def get_config():
    config = config_lib.base_config()
    config.dtype = "bfloat16"
    return config
