"""Convert an official DATE PyTorch checkpoint (mmdetection .pth) into a date-jax workdir.

A thin entry point; the command lives in `date_jax/commands/convert_checkpoint.py`.
"""
from date_jax.commands.convert_checkpoint import main

if __name__ == "__main__":
    main()
