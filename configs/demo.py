"""Demo: a small DATE (ResNet-10, 48-channel FPN and head, POTO + FCOS) on the embedded synthetic shapes data set.

Run:      python train.py --config configs/demo.py --workdir runs/demo
Hardware: a laptop CPU (2 cores: about 8 minutes for training and evaluation); the data set (2,000 + 200 images of
          160 px, four shape classes) is written to data/synthetic on first use.
Expected: no seed-table row; the README records what this run printed (COCO AP / AP50 on the synthetic val split).
"""
from date_jax import config as config_lib


def get_config():
    config = config_lib.base_config()
    config.seed = 0
    config.dtype = "float32"
    config.init_from.backbone = ""  # trained from scratch
    m = config.model
    m.num_classes = 4
    m.backbone.update(depth=18, style="pytorch", base_width=16, stage_blocks=(1, 1, 1, 1), frozen_stages=-1)
    m.neck.out_channels = 48
    m.head.update(feat_channels=48, stacked_convs=2, num_groups=16)
    d = config.data
    # Short side 128, long side <= 160: every image fits one 160x160 bucket, so the step compiles once.
    d.update(source="synthetic", root="data/synthetic", pipeline="1x", train_short_sizes=(128,), max_size=160,
             test_short_size=128, max_boxes=20, bucket_divisor=160, batch_size=8, eval_batch_size=16)
    config.optim.update(base_lr=3e-3, warmup_steps=100)   # 1.5e-3 for the batch of 8 (linear scaling from 16)
    config.schedule.update(num_steps=1500, decay_steps=(1250, 1420))
    config.log_every_steps = 100
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 2
    config.eval_every_epochs = 0      # evaluate once, at the end (the README's timing)
    return config
