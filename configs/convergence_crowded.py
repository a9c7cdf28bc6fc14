"""The convergence study's set-up (docs/convergence.md): a demo-sized DATE on the crowded synthetic set.

Run:      python tools/convergence_study.py --config configs/convergence_crowded.py --workdir runs/study_crowded \
              --steps 1000 --eval_every 200 --seeds 0 1 2 3 4
          one run alone: python train.py --config configs/convergence_crowded.py --workdir runs/crowded
Hardware: a laptop CPU (2 cores); the set (2,000 + 300 images of about 160 px, eight shape classes, 6-30 objects
          each, clutter) is written to data/synthetic_crowded on first use.
Expected: no seed-table row; docs/convergence.md records what the study printed.

Self-contained (the study runs a pinned copy of this file): the network, pipeline and optimiser are those of
configs/demo.py; the data set, the class count, max_boxes and the evaluation differ.
"""
from date_jax import config as config_lib


def get_config():
    config = config_lib.base_config()
    config.seed = 0
    config.dtype = "float32"
    config.init_from.backbone = ""  # trained from scratch
    m = config.model
    m.num_classes = 8
    m.backbone.update(depth=18, style="pytorch", base_width=16, stage_blocks=(1, 1, 1, 1), frozen_stages=-1)
    m.neck.out_channels = 48
    m.head.update(feat_channels=48, stacked_convs=2, num_groups=16)
    d = config.data
    d.update(source="synthetic", root="data/synthetic_crowded", pipeline="1x", train_short_sizes=(128,), max_size=160,
             test_short_size=128, max_boxes=32, bucket_divisor=160, batch_size=8, eval_batch_size=20)
    d.synthetic.update(style="crowded", num_val=300)
    config.optim.update(base_lr=3e-3, warmup_steps=100)
    config.schedule.update(num_steps=1000, decay_steps=(800, 933))
    config.log_every_steps = 50
    config.checkpoint_every_steps = 200
    config.keep_checkpoints = 1
    config.eval_every_epochs = 0
    config.eval_every_steps = 200
    config.num_eval_images = 300
    config.num_summary_images = 0
    return config
