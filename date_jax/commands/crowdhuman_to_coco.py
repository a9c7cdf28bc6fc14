"""Convert CrowdHuman odgt files to COCO json: python tools/crowdhuman_to_coco.py --root data/CrowdHuman

Reads <root>/annotation_{train,val}.odgt and the JPEGs in <root>/Images, writes <root>/annotations/{train,val}.json.
"""
from absl import flags

from date_jax import cli
from date_jax.data import crowdhuman

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "data/CrowdHuman", "Folder with annotation_*.odgt and Images/.")
flags.DEFINE_list("splits", ["train", "val"], "Splits to convert.")


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {argv[1:]}")
    for path in crowdhuman.convert_crowdhuman(FLAGS.root, tuple(FLAGS.splits)):
        print(path)


def main() -> None:
    """Console entry point (`date-jax-crowdhuman-to-coco`)."""
    cli.run(_main, tensorflow=False, distributed=False)


if __name__ == "__main__":
    main()
