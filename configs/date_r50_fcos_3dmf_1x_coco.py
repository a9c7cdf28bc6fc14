"""DATE-R50-F-3DMF, COCO, 12 epochs (1x): the one-to-one branch with DeFCN's 3D max filtering.

Run:      python train.py --config configs/date_r50_fcos_3dmf_1x_coco.py --workdir runs/date_r50_fcos_3dmf_1x
Hardware: 16 images per step (e.g. 8 GPUs x 2), bf16 on accelerators.
Expected (seed table): AP 38.9, AP50 57.1, AP75 42.9, APs 22.5, APm 42.1, APl 51.3.
"""
from date_jax import config as config_lib


def get_config():
    config = config_lib.base_config()
    config.dtype = "bfloat16"
    config.model.o2o = "3dmf"
    return config
