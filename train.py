"""Train a DATE detector: python train.py --config configs/X.py --workdir DIR [--config.key=value ...].

A thin entry point; the command lives in `date_jax/commands/train.py` (also installed as `date-jax-train`).
"""
from date_jax.commands.train import main

if __name__ == "__main__":
    main()
