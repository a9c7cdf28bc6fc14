"""Test helpers shared by several test modules (import as `tests.helpers`)."""
import jax
import numpy as np

from date_jax.models import detector


def random_variables(config, seed: int = 0, class_std: float = 3.0):
    """Variables of the model `config` builds without compiling its init: N(0, 0.1) weights, unit scales, BN identity.

    The one-to-one class kernel is larger (`class_std`) so that scores spread out and rankings stay stable."""
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if name.endswith(("scale", "var")):
            return np.ones(x.shape, np.float32)
        if name.endswith(("bias", "mean")):
            return np.zeros(x.shape, np.float32)
        return rng.normal(0, class_std if "predictors_0/conv_cls" in name else 0.1, x.shape).astype(np.float32)
    return jax.tree_util.tree_map_with_path(leaf, detector.abstract_variables(config))
