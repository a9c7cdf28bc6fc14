"""Detect objects in image files with a trained workdir and write copies with the boxes drawn.

    python tools/demo.py --workdir runs/demo --images a.jpg b.png --out demo_out [--step N] [--score_thr 0.3]
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from date_jax import cpu_memory  # noqa: E402

if __name__ == "__main__":
    cpu_memory.retain_freed_memory()   # first: before JAX creates its CPU client

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training directory with checkpoints/ and config.json.")
flags.DEFINE_multi_string("images", None, "Image files (JPEG/PNG); repeat the flag or list them after --images.")
flags.DEFINE_string("out", "demo_out", "Folder for the images with boxes (<name>.png).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_float("score_thr", 0.3, "Draw detections scoring at least this.")
flags.mark_flags_as_required(["workdir", "images"])


def main(argv):
    from date_jax.evaluation import draw
    from date_jax.inference import Detector

    paths = list(FLAGS.images) + list(argv[1:])      # `--images a.jpg b.jpg` leaves b.jpg as a positional argument
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        sys.exit(f"error: image file(s) not found: {missing}")
    try:
        detector = Detector.from_workdir(FLAGS.workdir, step=FLAGS.step)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    for path, image, result in zip(paths, images, detector.predict(images)):
        target = os.path.join(FLAGS.out, os.path.splitext(os.path.basename(path))[0] + ".png")
        draw.save_png(detector.draw(image, result, FLAGS.score_thr), target)
        shown = int((result["scores"] >= FLAGS.score_thr).sum())
        print(f"{path}: {shown} detections >= {FLAGS.score_thr} -> {target}", flush=True)


if __name__ == "__main__":
    app.run(main)
