"""DATE-R50-R, CrowdHuman, 30k iterations; one-to-one branch assigned by the DETR-style Hungarian cost.

Run:      python train.py --config configs/date_r50_retina_crowdhuman.py --workdir runs/date_r50_retina_crowdhuman
Hardware: 16 images per step (e.g. 8 GPUs x 2), bf16 on accelerators.
Expected (seed table): AP50 90.6, mMR 48.4, Recall 97.9.
"""
from date_jax import config as config_lib


def get_config():
    config = config_lib.use_crowdhuman(config_lib.base_config())
    config.dtype = "bfloat16"
    config.model.o2m = "retina"
    return config
