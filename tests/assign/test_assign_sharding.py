"""Sharded assignment on 8 CPU devices: same results as unsharded, and no collective inside any solver while loop."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import json, re
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
    from date_jax import priors
    from date_jax.config import base_config, tiny_model_config
    from date_jax.train.step import batch_loss, batch_targets

    COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")

    def loop_computations(hlo):
        """Names of every computation run inside a while loop (bodies, conditions and what they call)."""
        bodies, name = {}, None
        for line in hlo.splitlines():
            header = re.match(r"^(?:ENTRY )?%?([\\w.\\-]+) .*\\{$", line)
            if header:
                name = header.group(1)
                bodies[name] = []
            elif name is not None:
                bodies[name].append(line)
        calls = lambda text: set(re.findall(r"(?:body|condition|to_apply|calls|branch_computations)=\\{?%?([\\w.\\-]+)", text)) \\
            | set(re.findall(r"%([\\w.\\-]+)", " ".join(re.findall(r"branch_computations=\\{([^}]*)\\}", text))))
        todo = set()
        for lines in bodies.values():
            for line in lines:
                if " while(" in line:
                    todo |= set(re.findall(r"(?:body|condition)=%?([\\w.\\-]+)", line))
        seen = set()
        while todo:
            current = todo.pop()
            if current in seen or current not in bodies:
                continue
            seen.add(current)
            todo |= calls("\\n".join(bodies[current]))
        return {n: "\\n".join(bodies[n]) for n in seen}

    def collectives_in_loops(compiled):
        loops = loop_computations(compiled.as_text())
        found = sorted({op for text in loops.values() for op in COLLECTIVES if op + "(" in text or op + "-start(" in text})
        return len(loops), found

    mesh = Mesh(np.array(jax.devices()), ("data",), axis_types=(AxisType.Auto,))
    data = NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(0)
    hw, batch_size, num_boxes = (64, 96), 8, 5
    grid = priors.point_grid(hw)
    n = grid.num_points
    centre = rng.uniform([10, 10], [86, 54], (batch_size, num_boxes, 2))
    size = rng.uniform(8, 40, (batch_size, num_boxes, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], -1).astype(np.float32)
    labels = rng.integers(0, 3, (batch_size, num_boxes)).astype(np.int32)
    mask = rng.random((batch_size, num_boxes)) < 0.8
    logits = rng.normal(-2, 1, (batch_size, n, 3)).astype(np.float32)
    pred = np.concatenate([grid.points - rng.uniform(0, 30, (n, 2)), grid.points + rng.uniform(0, 30, (n, 2))], -1)
    pred = np.broadcast_to(pred, (batch_size, n, 4)).astype(np.float32)
    image_shape = np.tile(np.array([[64, 96]], np.int32), (batch_size, 1))
    config = base_config()
    config.model = tiny_model_config(num_classes=3)
    ltrb = np.concatenate([grid.points - pred[..., :2], pred[..., 2:] - grid.points], -1)
    outputs = dict(o2o_logits=logits, o2o_ltrb=ltrb, o2m_logits=logits, o2m_ltrb=np.abs(ltrb) + 1.0,
                   o2m_centerness=jnp.zeros((batch_size, n, 1)))
    batch = dict(image=np.zeros((batch_size,) + hw + (3,), np.uint8), boxes=boxes, labels=labels, box_mask=mask,
                 image_shape=image_shape, example_mask=np.arange(batch_size) < 7)
    put = lambda tree: jax.tree_util.tree_map(lambda x: jax.device_put(x, data), tree)

    # negative control: a loop whose body reduces a sharded array must be reported
    control = jax.jit(lambda x: jax.lax.fori_loop(0, 3, lambda i, c: c + jnp.sum(x * c), 0.0))
    x = jax.device_put(np.arange(16.0, dtype=np.float32), data)
    results = {"control": collectives_in_loops(control.lower(x).compile())[1]}
    valid = mask & (np.arange(batch_size) < 7)[:, None]
    for mode in ("poto", "hungarian"):
        config.assign.o2o = mode
        plain = jax.jit(lambda o, b: batch_targets(o, b, config, None))(outputs, batch)["o2o_point_to_gt"]
        sharded_fn = jax.jit(lambda o, b: batch_targets(o, b, config, mesh)["o2o_point_to_gt"])
        sharded = sharded_fn(put(outputs), put(batch))
        num_loops, found = collectives_in_loops(sharded_fn.lower(put(outputs), put(batch)).compile())
        results[mode] = dict(
            equal=bool(np.array_equal(np.asarray(plain), np.asarray(sharded))),
            matched=int((np.asarray(sharded) >= 0).sum()), valid=int(valid.sum()),
            loop_computations=num_loops, collectives_in_loops=found, output_sharded=str(sharded.sharding.spec))
    config.assign.o2o = "poto"

    _, plain_terms = jax.jit(lambda o, b: batch_loss(o, b, config))(outputs, batch)
    sharded_loss = jax.jit(lambda o, b: batch_loss(o, b, config, mesh))
    _, sharded_terms = sharded_loss(put(outputs), put(batch))
    _, loss_found = collectives_in_loops(sharded_loss.lower(put(outputs), put(batch)).compile())
    results["loss"] = dict(plain={k: float(v) for k, v in plain_terms.items()},
                           sharded={k: float(v) for k, v in sharded_terms.items()}, collectives_in_loops=loss_found)
    print("RESULT" + json.dumps(results))
''')  # noqa: E501 (the worker script's regular expressions read best on one line)


@pytest.mark.slow
def test_sharded_assignment_matches_and_has_no_collectives_in_loops():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    results = json.loads(line[len("RESULT"):])
    assert "all-reduce" in results["control"], "the HLO loop scan must see a collective in a reducing loop"
    for mode in ("poto", "hungarian"):
        res = results[mode]
        assert res["equal"], f"{mode}: sharded assignment differs from the unsharded one"
        assert res["matched"] == res["valid"]
        assert res["loop_computations"] > 0, "the solver's while loop should be in the compiled program"
        assert res["collectives_in_loops"] == [], res
        assert "data" in res["output_sharded"]
    loss = results["loss"]
    assert loss["collectives_in_loops"] == []
    assert set(loss["plain"]) == {"o2o_cls", "o2o_box", "o2o_iou", "fcos_cls", "fcos_iou", "fcos_ctr"}
    for name, value in loss["plain"].items():
        assert abs(loss["sharded"][name] - value) <= 1e-5 * max(1.0, abs(value)), (name, loss)
