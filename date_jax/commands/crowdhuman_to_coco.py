"""Convert CrowdHuman odgt files to COCO json: python tools/crowdhuman_to_coco.py --root data/CrowdHuman

Reads <root>/annotation_{train,val}.odgt and the JPEGs in <root>/Images, writes <root>/annotations/{train,val}.json.
"""
import argparse
import logging
import sys

from date_jax.data import crowdhuman


def main() -> None:
    """Console entry point (`date-jax-crowdhuman-to-coco`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/CrowdHuman", help="folder with annotation_*.odgt and Images/")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        written = crowdhuman.convert_crowdhuman(args.root, tuple(args.splits))
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
