"""The one base configuration every experiment in `configs/` starts from, and the helpers that derive values.

Sections: `model`, `assign`, `loss`, `data`, `test`, `optim`, `schedule`, `init_from`, plus loop settings at the top.
Configs change only what differs from the base; derived values (steps per epoch, lr for the batch) are computed by the
functions at the bottom, never copied by hand.
"""
from __future__ import annotations

import ml_collections

ConfigDict = ml_collections.ConfigDict


def model_config() -> ConfigDict:
    """DATE-R50-F as released: caffe ResNet-50, FPN P3-P7 with 256 channels, 4-conv GN towers, POTO o2o + FCOS o2m."""
    return ConfigDict(dict(
        num_classes=80,             # 0 -> read from the training annotation file; otherwise checked against it
        strides=(8, 16, 32, 64, 128),
        backbone=dict(
            depth=50,               # 18 | 34 | 50 | 101 (ResNet) ; stage_blocks overrides the block counts
            style="caffe",          # caffe: stride on conv1 of a bottleneck, BGR minus mean; pytorch: on conv2, RGB/std
            base_width=64,          # channels of the stem and of stage 1 (tiny test variants shrink this)
            stage_blocks=(),        # () -> the standard counts for `depth`
            frozen_stages=1,        # stem + stages 1..k receive no updates; BatchNorm is always frozen
        ),
        neck=dict(out_channels=256),
        head=dict(
            feat_channels=256,
            stacked_convs=4,
            num_groups=32,          # GroupNorm groups in the towers and the 3DMF block
            prior_prob=0.01,        # cls bias init = -log((1 - p) / p)
        ),
        o2o="point",                # 'point' (plain one-to-one head) | '3dmf' (DeFCN 3D max filter) | 'none'
        o2m="fcos",                 # 'fcos' | 'retina' | 'none'
        anchors=dict(octave_base_scale=4.0, scales_per_octave=3, ratios=(0.5, 1.0, 2.0)),
        max_filter=dict(kernel_size=3, num_levels=3),   # 3DMF: spatial window and levels (tau + 1)
    ))


def assign_config() -> ConfigDict:
    """Label assignment of both branches (docs/spec.md §4)."""
    return ConfigDict(dict(
        o2o="poto",                 # 'poto' (COCO) | 'hungarian' (DETR-style cost, CrowdHuman)
        poto_alpha=0.8,             # quality = p^(1 - alpha) * IoU^alpha
        center_radius=1.5,          # centre prior: radius * stride around the gt centre, clipped to the gt box
        hungarian_cost=dict(cls=2.0, l1=5.0, giou=2.0, focal_alpha=0.25, focal_gamma=2.0),
        retina=dict(pos_iou=0.5, neg_iou=0.4, min_pos_iou=0.0, gt_max_assign_all=True),
    ))


def loss_config() -> ConfigDict:
    """Loss weights by the reference's names (docs/spec.md §5)."""
    return ConfigDict(dict(
        focal_alpha=0.25,
        focal_gamma=2.0,
        o2o_cls=2.0, o2o_box=5.0, o2o_iou=2.0,
        fcos_cls=1.0, fcos_iou=1.0, fcos_ctr=1.0,
        retina_cls=2.0, retina_box=2.0,
    ))


def data_config() -> ConfigDict:
    """COCO 2017 in the mmdetection layout with the 1x pipeline (docs/spec.md §2.3)."""
    return ConfigDict(dict(
        source="coco",              # 'coco' (json + image folder) | 'tfds' | 'synthetic'
        root="data/coco",           # train_ann / train_images / val_ann / val_images are relative to this
        train_ann="annotations/instances_train2017.json",
        train_images="train2017",
        val_ann="annotations/instances_val2017.json",
        val_images="val2017",
        tfds_name="coco/2017",      # source='tfds': a prepared tfds data set, TFRecord (tfds default) or ArrayRecord
        tfds_data_dir="",           # '' -> the tfds default (~/tensorflow_datasets)
        tfds_train_split="train",
        tfds_val_split="validation",
        pipeline="1x",              # '1x' | '3x' | 'crowdhuman' (training augmentations, docs/spec.md §2.3)
        train_short_sizes=(),       # short sides drawn per image; () -> the pipeline's own (1x: 800; 3x: 480..800 step
                                    # 32; crowdhuman: 640..896 step 32)
        crop_short_sizes=(),        # 3x / crowdhuman crop policy: short side before the crop; () -> (400, 500, 600)
        crop_size=(384, 600),       # 3x / crowdhuman crop policy: crop h, w drawn in [min(side, lo), min(side, hi)]
        flip_prob=0.5,
        max_size=1333,              # long-side cap for training and test resizes
        test_short_size=800,
        max_boxes=100,              # boxes per image after the transforms; more are cut (largest kept), counted, logged
        bucket_divisor=128,         # padded sizes are multiples of this; a bucket holds one aspect-ratio class
        batch_size=16,              # global, across all processes
        eval_batch_size=8,          # global
        num_parallel_calls=-1,      # decode/transform threads per process; -1 -> one per CPU core
        prefetch=2,                 # batches decoded ahead (x the per-process batch size in images)
        check_files=True,           # stat every image file once at start-up; missing or empty ones are skipped, counted
        num_train_images=0,         # 0 -> read from the annotation file; used to turn epochs into steps
        synthetic=dict(num_train=0, num_val=0, image_size=0, seed=0, style=""),  # source='synthetic': written to
                                    # `root` by synthetic.prepare before loading, only into a new or empty folder
                                    # (annotations/instances_{train,val}.json, train/, val/); 0/'' -> 2000 / 200 /
                                    # 160 / 'shapes' ('crowded': the convergence study's harder set)
    ))


def test_config() -> ConfigDict:
    """NMS-free decoding of the one-to-one branch (docs/spec.md §6)."""
    return ConfigDict(dict(
        score_thr=0.01,
        nms_pre=100,                # per level
        max_per_img=100,
        nms=False,                  # only the FCOS baseline sets this
        nms_iou=0.6,
        metric="coco",              # 'coco' | 'crowdhuman'
    ))


def optim_config() -> ConfigDict:
    """AdamW of docs/spec.md §2.4; lr is for `base_batch_size` images and is scaled linearly with the global batch."""
    return ConfigDict(dict(
        base_lr=4e-4,
        base_batch_size=16,
        weight_decay=1e-4,
        b1=0.9, b2=0.999, eps=1e-8,
        backbone_lr_mult=0.1,
        clip_norm=0.1,
        warmup_steps=1000,
        warmup_ratio=0.001,
    ))


def schedule_config() -> ConfigDict:
    """12 epochs with decays after epochs 8 and 11; set `num_steps` for an iteration-based schedule."""
    return ConfigDict(dict(
        epochs=12,
        decay_epochs=(8, 11),
        num_steps=0,                # > 0: iteration based, with `decay_steps`
        decay_steps=(),
        gamma=0.1,
    ))


def base_config() -> ConfigDict:
    """DATE-R50-F on COCO, 1x, 16 images per step: the released recipe."""
    config = ConfigDict()
    config.seed = 0
    config.dtype = "float32"        # compute dtype; params stay float32 ('bfloat16' on accelerators)
    config.model = model_config()
    config.assign = assign_config()
    config.loss = loss_config()
    config.data = data_config()
    config.test = test_config()
    config.optim = optim_config()
    config.schedule = schedule_config()
    # The reference starts from Detectron's caffe ResNet-50: downloaded into $DATE_JAX_CACHE on first use and
    # hash-checked (docs/pretrained.md); a local .pth path works too, and '' trains from scratch.
    config.init_from = ConfigDict(dict(backbone="open-mmlab://detectron/resnet50_caffe", checkpoint=""))
    config.log_every_steps = 50
    config.checkpoint_every_steps = 2000
    config.keep_checkpoints = 3
    config.eval_every_epochs = 1    # evaluate during training every this many epochs (0 -> only at the end)
    config.eval_every_steps = 0     # > 0: every this many steps instead (iteration-based schedules)
    config.num_eval_images = 0      # 0 -> the whole validation set
    config.num_summary_images = 4
    return config


def steps_per_epoch(config: ConfigDict, num_train_images: int) -> int:
    """Optimizer steps in one pass over `num_train_images` with the global batch size (drop remainder)."""
    return max(1, num_train_images // config.data.batch_size)


def total_steps(config: ConfigDict, num_train_images: int) -> int:
    """Length of the run in steps, from iterations or from epochs."""
    if config.schedule.num_steps > 0:
        return int(config.schedule.num_steps)
    return int(config.schedule.epochs * steps_per_epoch(config, num_train_images))


def decay_boundaries(config: ConfigDict, num_train_images: int) -> tuple[int, ...]:
    """Steps after which the lr is multiplied by `gamma`."""
    if config.schedule.num_steps > 0:
        return tuple(int(s) for s in config.schedule.decay_steps)
    per_epoch = steps_per_epoch(config, num_train_images)
    return tuple(int(e * per_epoch) for e in config.schedule.decay_epochs)


def learning_rate(config: ConfigDict) -> float:
    """Peak lr for the configured global batch (linear scaling from `base_batch_size`)."""
    return config.optim.base_lr * config.data.batch_size / config.optim.base_batch_size


def tiny_model_config(num_classes: int = 3, o2o: str = "point", o2m: str = "fcos") -> ConfigDict:
    """A few-thousand-parameter DATE (ResNet with one block per stage, 16 channels) for tests."""
    model = model_config()
    model.num_classes = num_classes
    model.backbone.depth = 18
    model.backbone.base_width = 8
    model.backbone.stage_blocks = (1, 1, 1, 1)
    model.neck.out_channels = 16
    model.head.feat_channels = 16
    model.head.stacked_convs = 2
    model.head.num_groups = 4
    model.o2o = o2o
    model.o2m = o2m
    return model


def reference_evaluation(config: ConfigDict) -> ConfigDict:
    """Evaluate exactly as the reference does (docs/spec.md §D): float32 compute, each image padded to a multiple of
    32 of its
    own size, one image per batch. Changes nothing else (for the released weights, docs/pretrained.md)."""
    config.dtype = "float32"
    config.data.bucket_divisor = 32
    config.data.eval_batch_size = 1
    return config


def use_3x_schedule(config: ConfigDict) -> ConfigDict:
    """36 epochs with the DETR-style multi-scale + crop pipeline, decays after epochs 24 and 33 (docs/spec.md
    §2.3-2.4)."""
    config.data.pipeline = "3x"
    config.schedule.epochs = 36
    config.schedule.decay_epochs = (24, 33)
    return config


def use_crowdhuman(config: ConfigDict) -> ConfigDict:
    """CrowdHuman recipe (docs/spec.md §7.3): 1 class, DETR-style Hungarian o2o cost, 30k iterations, CrowdHuman
    metrics."""
    config.model.num_classes = 1
    config.assign.o2o = "hungarian"
    d = config.data
    d.root = "data/CrowdHuman"
    d.train_ann, d.train_images = "annotations/train.json", "Images"
    d.val_ann, d.val_images = "annotations/val.json", "Images"
    d.pipeline = "crowdhuman"
    d.max_size = 1400
    d.test_short_size = 800
    d.max_boxes = 400
    config.schedule.num_steps = 30000
    config.schedule.decay_steps = (20000, 25000)
    config.test.update(score_thr=0.01, nms_pre=1000, max_per_img=500, metric="crowdhuman")
    config.checkpoint_every_steps = 5000
    config.eval_every_steps = 5000
    return config
