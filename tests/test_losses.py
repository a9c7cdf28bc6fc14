"""Loss terms against hand-computed values; gradients never flow through the matching; degenerate batches stay
finite."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from date_jax import boxes as box_ops
from date_jax import losses, priors
from date_jax.config import base_config, tiny_model_config
from date_jax.models.head import filtered_logits
from date_jax.train.step import batch_loss

LN2 = math.log(2.0)
HW = (64, 64)
GT = np.array([16.0, 16.0, 48.0, 40.0], np.float32)           # 32 x 24
SHIFTED = GT + np.array([4.0, 0.0, 4.0, 0.0], np.float32)        # IoU = GIoU = 672 / 864 = 7 / 9


def make_config(o2o="point", o2m="fcos", num_classes=3):
    config = base_config()
    config.model = tiny_model_config(num_classes=num_classes, o2o=o2o, o2m=o2m)
    return config


def make_case(config, batch_size=1, num_boxes=1):
    """Every point predicts SHIFTED with logit 0 (o2o and o2m) and centerness logit 0; one gt GT of class 1. The
    outputs hold every key of both one-to-many heads (the loss uses the configured one's targets)."""
    grid = priors.point_grid(HW)
    n, c = grid.num_points, config.model.num_classes
    ltrb = np.asarray(box_ops.boxes_to_ltrb(grid.points, SHIFTED[None]))
    num_anchors = n * priors.num_anchors_per_point()
    outputs = dict(
        o2o_logits=jnp.zeros((batch_size, n, c)), o2o_ltrb=jnp.tile(ltrb[None], (batch_size, 1, 1)),
        o2o_filter=jnp.zeros((batch_size, n, 1)),
        o2m_logits=jnp.zeros((batch_size, num_anchors if config.model.o2m == "retina" else n, c)),
        o2m_ltrb=jnp.tile(ltrb[None], (batch_size, 1, 1)), o2m_centerness=jnp.zeros((batch_size, n, 1)),
        o2m_deltas=jnp.zeros((batch_size, num_anchors, 4)),
    )
    if config.model.o2o != "3dmf":         # as the network: the filter logits exist only with the 3DMF head
        del outputs["o2o_filter"]
    boxes = np.zeros((batch_size, num_boxes, 4), np.float32)
    mask = np.zeros((batch_size, num_boxes), bool)
    if num_boxes:
        boxes[:, 0], mask[:, 0] = GT, True
    batch = dict(image=jnp.zeros((batch_size,) + HW + (3,), jnp.uint8), boxes=jnp.asarray(boxes),
                 labels=jnp.ones((batch_size, num_boxes), jnp.int32), box_mask=jnp.asarray(mask),
                 image_shape=jnp.tile(jnp.array([[56, 64]], jnp.int32), (batch_size, 1)),
                 example_mask=jnp.ones((batch_size,), bool))
    return outputs, batch


def test_elementwise_terms_hand_computed():
    np.testing.assert_allclose(losses.sigmoid_focal_loss(jnp.zeros(2), jnp.array([1.0, 0.0])),
                               [0.25 * 0.25 * LN2, 0.75 * 0.25 * LN2], rtol=1e-6)
    a, b = jnp.array([0.0, 0.0, 2.0, 2.0]), jnp.array([1.0, 1.0, 3.0, 3.0])   # inter 1, union 7, enclose 9
    np.testing.assert_allclose(losses.giou_loss(a, b), 1 - (1 / 7 - 2 / 9), rtol=1e-6)
    np.testing.assert_allclose(losses.log_iou_loss(a, b), math.log(7), rtol=1e-6)
    np.testing.assert_allclose(losses.binary_cross_entropy(jnp.zeros(()), jnp.array(0.3)), LN2, rtol=1e-6)
    np.testing.assert_allclose(losses.binary_cross_entropy(jnp.array(2.0), jnp.array(1.0)), math.log1p(math.exp(-2)),
                               rtol=1e-6)
    # image 100 high, 200 wide: cx differs by 5 / 200, w by 10 / 200
    np.testing.assert_allclose(losses.normalized_box_l1(jnp.array([0.0, 0, 10, 20]), jnp.array([0.0, 0, 20, 20]),
                                                        jnp.array([100, 200])), 0.025 + 0.05, rtol=1e-6)
    np.testing.assert_allclose(losses.delta_l1(jnp.array([0.1, -0.2, 0.3, 0.0]), jnp.zeros(4)), 0.6, rtol=1e-6)


def test_filtered_logits_clip_and_gradient():
    np.testing.assert_allclose(filtered_logits(jnp.zeros(1), jnp.zeros(1)), [math.log(1 / 3)], rtol=1e-5)
    low = filtered_logits(jnp.array([-20.0]), jnp.array([-20.0]))
    np.testing.assert_allclose(low, [math.log(1e-5 / (1 - 1e-5))], rtol=1e-4)
    grad = jax.grad(lambda z: filtered_logits(z, jnp.array([-20.0]))[0])(jnp.array([-20.0]))
    assert grad[0] == 0.0, "the clip must zero gradients outside [1e-5, 1 - 1e-5]"


def test_date_loss_fcos_hand_computed():
    config = make_config()
    outputs, batch = make_case(config)
    total, terms = jax.jit(lambda o, b: batch_loss(o, b, config))(outputs, batch)
    n, c = priors.point_grid(HW).num_points, 3
    # o2o: one positive; every focal entry is 0.75/4 ln2 except the positive's 1/16 ln2
    np.testing.assert_allclose(terms["o2o_cls"], 2.0 * ((n * c - 1) * 0.1875 * LN2 + 0.0625 * LN2), rtol=1e-5)
    np.testing.assert_allclose(terms["o2o_iou"], 2.0 * (1 - 7 / 9), rtol=1e-5)
    np.testing.assert_allclose(terms["o2o_box"], 5.0 * 4 / 64, rtol=1e-5)
    # FCOS: 4 x 3 stride-8 points lie strictly inside GT and within (-1, 64]; no other level qualifies
    positives = 12
    np.testing.assert_allclose(terms["fcos_cls"],
                               ((n * c - positives) * 0.1875 * LN2 + positives * 0.0625 * LN2) / positives, rtol=1e-5)
    np.testing.assert_allclose(terms["fcos_iou"], -math.log(7 / 9), rtol=1e-5)
    np.testing.assert_allclose(terms["fcos_ctr"], LN2, rtol=1e-5)
    np.testing.assert_allclose(total, sum(float(v) for v in terms.values()), rtol=1e-6)


def test_date_loss_retina_matches_reference_targets():
    from tests.assign.test_o2m_targets import retina_reference
    config = make_config(o2m="retina")
    outputs, batch = make_case(config)
    _, terms = jax.jit(lambda o, b: batch_loss(o, b, config))(outputs, batch)
    assert set(terms) == {"o2o_cls", "o2o_box", "o2o_iou", "retina_cls", "retina_box"}
    anchors = priors.anchors(HW)
    labels, weights, deltas = retina_reference(anchors, GT[None], np.array([1]), np.array([True]))
    num_pos = max((labels < 3).sum(), 1)
    cls = (weights.sum() * 3 - (labels < 3).sum()) * 0.1875 * LN2 + (labels < 3).sum() * 0.0625 * LN2
    np.testing.assert_allclose(terms["retina_cls"], 2.0 * cls / num_pos, rtol=1e-5)
    np.testing.assert_allclose(terms["retina_box"], 2.0 * np.abs(deltas).sum() / num_pos, rtol=1e-4)


@pytest.mark.parametrize("o2o,o2m", [("point", "fcos"), ("3dmf", "retina")])
def test_no_gradient_through_matching(o2o, o2m):
    config = make_config(o2o=o2o, o2m=o2m)
    outputs, batch = make_case(config)
    outputs["o2o_logits"] = jax.random.normal(jax.random.PRNGKey(0), outputs["o2o_logits"].shape)

    def parts(out):
        total, terms = batch_loss(out, batch, config)
        return terms["o2o_cls"], terms["o2o_box"] + terms["o2o_iou"], total

    cls_grads, box_grads, grads = jax.jit(jax.jacrev(parts))(outputs)
    # o2o_cls depends on the predicted boxes only through the matching; the box terms on logits likewise.
    assert not np.any(np.asarray(cls_grads["o2o_ltrb"]))
    assert not np.any(np.asarray(box_grads["o2o_logits"]))
    assert np.any(np.asarray(box_grads["o2o_ltrb"]))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grads))
    assert np.any(np.asarray(grads["o2o_logits"]))


@pytest.mark.parametrize("o2o,o2m", [("point", "none"), ("3dmf", "retina")])
def test_empty_and_padded_batches_are_finite(o2o, o2m):
    config = make_config(o2o=o2o, o2m=o2m)
    for num_boxes, valid in [(0, True), (4, False)]:
        outputs, batch = make_case(config, batch_size=2, num_boxes=num_boxes)
        batch["box_mask"] = jnp.zeros_like(batch["box_mask"])
        batch["example_mask"] = jnp.full((2,), valid)
        total, terms = jax.jit(lambda o, b: batch_loss(o, b, config))(outputs, batch)
        assert np.isfinite(float(total)) and all(np.isfinite(float(v)) for v in terms.values())
        assert set(terms) >= {"o2o_cls", "o2o_box", "o2o_iou"}
        for name in terms:
            if name.endswith(("_box", "_iou", "_ctr")):
                assert float(terms[name]) == 0.0, name
        if o2m == "none":
            assert not any(name.startswith(("fcos", "retina")) for name in terms)


def test_masked_examples_contribute_nothing():
    config = make_config()
    single_out, single = make_case(config, batch_size=1)
    double_out, double = make_case(config, batch_size=2)
    double_out["o2o_logits"] = double_out["o2o_logits"].at[1].set(3.0)      # garbage in the padding example
    double["example_mask"] = jnp.array([True, False])
    loss_fn = jax.jit(lambda o, b: batch_loss(o, b, config))
    _, one = loss_fn(single_out, single)
    _, two = loss_fn(double_out, double)
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-6, err_msg=name)
