"""DATE-R50-R, COCO, 12 epochs (1x): POTO one-to-one branch + RetinaNet one-to-many branch.

Run:      python train.py --config configs/date_r50_retina_1x_coco.py --workdir runs/date_r50_retina_1x
Hardware: 16 images per step (e.g. 8 GPUs x 2), bf16 on accelerators.
Expected (seed table): AP 37.0, AP50 54.9, AP75 40.4, APs 20.5, APm 39.8, APl 49.0.
"""
from date_jax import config as config_lib


def get_config():
    config = config_lib.base_config()
    config.dtype = "bfloat16"
    config.model.o2m = "retina"
    config.test.nms_pre = 1000
    return config
