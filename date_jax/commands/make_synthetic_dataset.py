"""Write the synthetic COCO-format shapes data set: python tools/make_synthetic_dataset.py --root data/synthetic

train.py writes it when a config with data.source='synthetic' starts; this tool makes it ahead of time or with other
sizes. Existing synthetic sets are kept; a folder that holds anything else is refused.
"""
import argparse
import logging
import sys

from date_jax.data import synthetic


def main() -> None:
    """Console entry point (`date-jax-make-synthetic`)."""
    d = synthetic.DEFAULTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/synthetic")
    parser.add_argument("--num_train", type=int, default=d["num_train"])
    parser.add_argument("--num_val", type=int, default=d["num_val"])
    parser.add_argument("--image_size", type=int, default=d["image_size"], help="typical side in pixels (+-20%%)")
    parser.add_argument("--seed", type=int, default=d["seed"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        synthetic.ensure_synthetic_dataset(args.root, args.num_train, args.num_val, args.image_size, args.seed)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(synthetic.split_paths(args.root, "train")[0], synthetic.split_paths(args.root, "val")[0])


if __name__ == "__main__":
    main()
