"""Your own COCO-format data set: DATE-R50-F (POTO + FCOS) from an ImageNet ResNet-50, sized for one GPU.

Run:      python train.py --config configs/coco_format.py:/data/trees --workdir runs/trees
Layout:   /data/trees/annotations/instances_train.json, /data/trees/annotations/instances_val.json, /data/trees/train/,
          /data/trees/val/ (elsewhere: --config.data.train_ann=... / train_images / val_ann / val_images, relative to
          the folder). The class count is read from instances_train.json. Details: docs/custom_data.md.
Hardware: one GPU, 8 images per step of up to 1333 x 800 px in bf16 (a 16 GB card may need
          --config.data.batch_size=4); the backbone file as in docs/pretrained.md.
Expected: no seed-table row (your data); COCO AP of the val split at the end, in <workdir>/eval/<step>/metrics.json.
"""
from date_jax import config as config_lib

DEFAULT_FOLDER = "data/custom"


def get_config(folder: str = DEFAULT_FOLDER):
    config = config_lib.base_config()
    config.dtype = "bfloat16"
    config.model.num_classes = 0          # 0: read from the training annotation file at start-up
    d = config.data
    d.update(source="coco", root=folder, train_ann="annotations/instances_train.json", train_images="train",
             val_ann="annotations/instances_val.json", val_images="val")
    # Multi-scale training (short side 480-800) for a small set; the test size stays at the COCO recipe's 800.
    d.update(pipeline="1x", train_short_sizes=tuple(range(480, 801, 32)), max_size=1333, test_short_size=800,
             batch_size=8, eval_batch_size=8)
    config.optim.warmup_steps = 300       # lr 2e-4 for the batch of 8 (linear scaling from 4e-4 at 16)
    config.schedule.update(epochs=24, decay_epochs=(16, 22))
    config.log_every_steps = 20
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 2
    return config
