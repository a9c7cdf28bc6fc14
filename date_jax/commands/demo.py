"""Detect objects in image files with a trained workdir and write copies with the boxes drawn.

    python tools/demo.py --workdir runs/demo --images a.jpg b.png --out demo_out [--step N] [--score_thr 0.3]
"""
import os

import numpy as np
from absl import flags

from date_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training directory with checkpoints/ and config.json.")
flags.DEFINE_multi_string("images", None, "Image files (JPEG/PNG); repeat the flag or list them after --images.")
flags.DEFINE_string("out", "demo_out", "Folder for the images with boxes (<name>.png).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_float("score_thr", 0.3, "Draw detections scoring at least this.")
flags.mark_flags_as_required(["workdir", "images"])


def _main(argv: list[str]) -> None:
    from PIL import Image

    from date_jax import draw
    from date_jax.inference import Detector

    paths = list(FLAGS.images) + list(argv[1:])      # `--images a.jpg b.jpg` leaves b.jpg as a positional argument
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise cli.UserError(f"image file(s) not found: {missing}")
    detector = Detector.from_workdir(FLAGS.workdir, step=FLAGS.step)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    for path, image, result in zip(paths, images, detector.predict(images)):
        target = os.path.join(FLAGS.out, os.path.splitext(os.path.basename(path))[0] + ".png")
        draw.save_png(detector.draw(image, result, FLAGS.score_thr), target)
        shown = int((result["scores"] >= FLAGS.score_thr).sum())
        print(f"{path}: {shown} detections >= {FLAGS.score_thr} -> {target}", flush=True)


def main() -> None:
    """Console entry point (`date-jax-demo`)."""
    cli.run(_main, tensorflow=False, distributed=False)


if __name__ == "__main__":
    main()
