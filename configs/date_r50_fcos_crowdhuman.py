"""DATE-R50-F, CrowdHuman, 30k iterations; one-to-one branch assigned by the DETR-style Hungarian cost.

Run:      python train.py --config configs/date_r50_fcos_crowdhuman.py --workdir runs/date_r50_fcos_crowdhuman
          (after tools/crowdhuman_to_coco.py has written data/CrowdHuman/annotations/{train,val}.json)
Hardware: 16 images per step (e.g. 8 GPUs x 2), bf16 on accelerators.
Expected (seed table): AP50 90.5, mMR 49.0, Recall 97.9.
"""
from date_jax import config as config_lib


def get_config():
    config = config_lib.use_crowdhuman(config_lib.base_config())
    config.dtype = "bfloat16"
    return config
