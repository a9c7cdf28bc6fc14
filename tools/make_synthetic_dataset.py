"""Write the synthetic COCO-format shapes data set: python tools/make_synthetic_dataset.py --root data/synthetic

A thin entry point; the command lives in `date_jax/commands/make_synthetic_dataset.py`.
"""
from date_jax.commands.make_synthetic_dataset import main

if __name__ == "__main__":
    main()
