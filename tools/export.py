"""Export a trained workdir for serving; see date_jax/commands/export.py (run with PYTHONPATH=. from the repository)."""
from date_jax.commands import export

if __name__ == "__main__":
    export.main()
