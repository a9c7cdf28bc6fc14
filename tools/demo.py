"""Detect objects in image files with a trained workdir and write copies with the boxes drawn.

A thin entry point; the command lives in `date_jax/commands/demo.py`.
"""
from date_jax.commands.demo import main

if __name__ == "__main__":
    main()
