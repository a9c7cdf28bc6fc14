"""The commands users run (`train.py`, `evaluate.py`, `tools/*.py`, and the `date-jax-*` console scripts)."""
