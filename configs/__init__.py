"""The experiment configs (one per file); installed with the package as `date_jax.configs`."""
