"""Convert an official DATE PyTorch checkpoint (mmdetection .pth) into a date-jax workdir.

    python tools/convert_checkpoint.py --config configs/date_r50_fcos_1x_coco.py --pth date_r50_12e.pth \\
        --workdir runs/date_r50_12e_converted
    python evaluate.py --config configs/date_r50_fcos_1x_coco.py --workdir runs/date_r50_12e_converted

The file is read without PyTorch and without running code from it (date_jax.convert.torch_pickle); its tensors are
mapped by docs/spec.md §10 names onto the model that --config builds (date_jax.convert.mmdet). Every missing, unused or
mis-shaped key is listed and stops the conversion unless --nostrict (then missing variables keep their random
initialisation). The result is checkpoint --step of WORKDIR plus WORKDIR/config.json, which evaluate.py and
`Detector.from_workdir` read directly.
"""
from typing import Any

from absl import flags
from ml_collections import config_flags

from date_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config of the model the weights belong to (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("pth", None, "PyTorch checkpoint (mmdetection .pth, docs/spec.md §10 names).")
flags.DEFINE_string("workdir", None, "Output workdir (created); evaluate.py and Detector.from_workdir read it.")
flags.DEFINE_integer("step", 0, "Checkpoint step number to write.")
flags.DEFINE_bool("strict", True, "Refuse missing and unused keys (shape mismatches are always refused).")
flags.mark_flags_as_required(["config", "pth", "workdir"])


def convert(config: Any, pth: str, workdir: str, step: int = 0, strict: bool = True) -> dict:
    """Read `pth`, map it onto the model of `config`, and save it as checkpoint `step` of `workdir`; returns
    variables."""
    import jax
    import numpy as np

    from date_jax import checkpoints
    from date_jax.convert import mmdet, pretrained, torch_pickle
    from date_jax.models import detector

    state_dict = torch_pickle.load(pth)
    variables = mmdet.state_dict_to_variables(state_dict, config, strict=strict)
    if not strict:
        model = detector.build_model(config)
        size = 2 * max(config.model.strides)
        fresh = jax.device_get(detector.init_variables(model, jax.random.PRNGKey(config.seed), (size, size)))
        variables = pretrained.merge_variables(jax.tree.map(np.asarray, fresh), variables)
    checkpoints.save_variables(workdir, step, variables, config)
    return variables


def _main(argv: list[str]) -> None:
    import jax
    import numpy as np

    from date_jax import checkpoints
    from date_jax.convert import mmdet, torch_pickle

    del argv
    try:
        variables = convert(FLAGS.config, FLAGS.pth, FLAGS.workdir, FLAGS.step, FLAGS.strict)
    except (torch_pickle.UnsafeCheckpointError, torch_pickle.CheckpointFormatError, mmdet.ConversionError) as e:
        raise cli.UserError(str(e)) from e
    count = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(variables))
    print(f"wrote {count:,} values from {FLAGS.pth} to {checkpoints.checkpoint_dir(FLAGS.workdir)} "
          f"(step {FLAGS.step}); evaluate with: python evaluate.py --config <same config> --workdir {FLAGS.workdir}")


def main() -> None:
    """Console entry point (`date-jax-convert`)."""
    cli.run(_main, tensorflow=False, distributed=False)


if __name__ == "__main__":
    main()
