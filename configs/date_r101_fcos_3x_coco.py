"""DATE-R101-F, COCO, 36 epochs (3x) with multi-scale + crop augmentation.

Run:      python train.py --config configs/date_r101_fcos_3x_coco.py --workdir runs/date_r101_fcos_3x
Hardware: 16 images per step (e.g. 8 GPUs x 2), bf16 on accelerators.
Expected (seed table): AP 42.2, AP50 60.6, AP75 46.3, APs 26.6, APm 45.8, APl 54.1.
"""
from date_jax import config as config_lib


def get_config():
    config = config_lib.use_3x_schedule(config_lib.base_config())
    config.dtype = "bfloat16"
    config.model.backbone.depth = 101
    config.init_from.backbone = "open-mmlab://detectron/resnet101_caffe"
    return config
