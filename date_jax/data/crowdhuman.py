"""CrowdHuman odgt -> COCO json exactly as the DATE converter (docs/spec.md §7.1): full-body boxes, ignore -> iscrowd."""
from __future__ import annotations

import json
import logging
import os

from PIL import Image

logger = logging.getLogger("date_jax.data")


def odgt_to_coco(odgt_file: str, image_dir: str) -> dict:
    """COCO dict of one odgt file: 1-based image ids in file order, every gtbox as `fbox`, iscrowd = extra.ignore."""
    if not os.path.isfile(odgt_file):
        raise FileNotFoundError(f"{odgt_file!r} not found; expected data/CrowdHuman/annotation_{{train,val}}.odgt "
                                f"(one JSON object per line) from the CrowdHuman release")
    images, annotations, missing = [], [], []
    with open(odgt_file) as f:
        lines = [line for line in f if line.strip()]
    for line_number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
            file_name = f"{entry['ID']}.jpg"
        except (ValueError, KeyError) as e:
            raise ValueError(f"{odgt_file}:{line_number} is not a CrowdHuman record ({e})") from e
        try:
            with Image.open(os.path.join(image_dir, file_name)) as image:
                width, height = image.size
        except OSError:
            missing.append(file_name)
            continue
        image_id = len(images) + 1
        images.append(dict(id=image_id, file_name=file_name, height=height, width=width))
        for box in entry.get("gtboxes", []):
            x, y, w, h = (float(v) for v in box["fbox"])
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=1, bbox=[x, y, w, h],
                bbox_vis=[float(v) for v in box.get("vbox", box["fbox"])], area=w * h,
                iscrowd=1 if box.get("extra", {}).get("ignore", 0) == 1 else 0))
    if missing:
        logger.warning("%s: %d images not found in %s (skipped), e.g. %s", odgt_file, len(missing), image_dir,
                       missing[0])
    return dict(images=images, annotations=annotations, categories=[dict(id=1, name="person")])


def convert_crowdhuman(root: str, splits: tuple[str, ...] = ("train", "val")) -> list[str]:
    """Write <root>/annotations/{split}.json from <root>/annotation_{split}.odgt and <root>/Images; returns paths."""
    written = []
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for split in splits:
        coco = odgt_to_coco(os.path.join(root, f"annotation_{split}.odgt"), os.path.join(root, "Images"))
        out = os.path.join(root, "annotations", f"{split}.json")
        with open(out, "w") as f:
            json.dump(coco, f)
        logger.info("Wrote %s: %d images, %d boxes.", out, len(coco["images"]), len(coco["annotations"]))
        written.append(out)
    return written
