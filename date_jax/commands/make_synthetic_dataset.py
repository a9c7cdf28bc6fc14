"""Write the synthetic COCO-format shapes data set: python tools/make_synthetic_dataset.py --root data/synthetic

train.py writes it when a config with data.source='synthetic' starts; this tool makes it ahead of time or with other
sizes. Existing synthetic sets are kept; a folder that holds anything else is refused.
"""
from absl import flags

from date_jax import cli
from date_jax.data import synthetic

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "data/synthetic", "Folder to write the set into (new, empty or an earlier synthetic set).")
flags.DEFINE_integer("num_train", synthetic.DEFAULTS["num_train"], "Training images.")
flags.DEFINE_integer("num_val", synthetic.DEFAULTS["num_val"], "Validation images.")
flags.DEFINE_integer("image_size", synthetic.DEFAULTS["image_size"], "Typical side in pixels (+-20%).")
flags.DEFINE_integer("seed", synthetic.DEFAULTS["seed"], "Seed of the generator.")
flags.DEFINE_enum("style", synthetic.DEFAULTS["style"], list(synthetic.STYLES),
                  "'shapes' (the demo's) or 'crowded' (the convergence study's harder set).")


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {argv[1:]}")
    synthetic.ensure_synthetic_dataset(FLAGS.root, FLAGS.num_train, FLAGS.num_val, FLAGS.image_size, FLAGS.seed,
                                       FLAGS.style)
    print(synthetic.split_paths(FLAGS.root, "train")[0], synthetic.split_paths(FLAGS.root, "val")[0])


def main() -> None:
    """Console entry point (`date-jax-make-synthetic`)."""
    cli.run(_main, tensorflow=False, distributed=False)


if __name__ == "__main__":
    main()
