"""Evaluate checkpoints: python evaluate.py --workdir DIR [--config configs/X.py] [--step N|latest|all] [--watch].

A thin entry point; the command lives in `date_jax/commands/evaluate.py` (also installed as `date-jax-evaluate`).
"""
from date_jax.commands.evaluate import main

if __name__ == "__main__":
    main()
