"""DATE-R50-F, COCO, 36 epochs (3x) with multi-scale + crop augmentation.

Run:      python train.py --config configs/date_r50_fcos_3x_coco.py --workdir runs/date_r50_fcos_3x
Hardware: 16 images per step (e.g. 8 GPUs x 2), bf16 on accelerators.
Expected (seed table): AP 40.6, AP50 58.9, AP75 44.4, APs 25.6, APm 44.1, APl 50.9.
"""
from date_jax import config as config_lib


def get_config():
    config = config_lib.use_3x_schedule(config_lib.base_config())
    config.dtype = "bfloat16"
    return config
