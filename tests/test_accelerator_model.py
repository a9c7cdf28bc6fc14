"""The analytic FLOP counter of benchmarks/accelerator_model.py against hand-computed numbers and XLA's own count."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from benchmarks import accelerator_model as am
from date_jax import priors


def test_valid_taps_by_hand():
    # 4 wide, 3x3, stride 1, padding 1: outputs 0 and 3 lose one tap each -> 2 + 3 + 3 + 2.
    assert am.valid_taps(4, 3, 1) == 10
    # 5 wide, stride 2: outputs read inputs (-1,0,1), (1,2,3), (3,4,5) -> 2 + 3 + 2.
    assert am.valid_taps(5, 3, 2) == 7
    assert am.valid_taps(6, 1, 2) == 3


def test_tiny_stack_by_hand():
    frozen = am.Conv("a", (4, 4), 2, 3, 3, 1, weight_grad=False, input_grad=False)   # 16 outputs x 9 taps x 2 x 3
    strided = am.Conv("b", (4, 4), 3, 5, 1, 2)                                        # 2x2 outputs x 1 tap x 3 x 5
    assert strided.out_hw == (2, 2)
    assert am.conv_macs(frozen) == 864 and am.conv_macs(frozen, skip_padding=True) == 100 * 6
    assert am.forward_flops([frozen, strided]) == 2 * (864 + 60)
    # The frozen conv costs its forward only; the trainable one forward + weight gradient + input gradient.
    assert am.train_flops([frozen, strided]) == 2 * (864 + 3 * 60)
    assert am.train_flops([frozen, strided], skip_padding=True) == 2 * (600 + 3 * 60)


def test_date_r50_head_and_levels():
    convs = am.date_r50_convs((800, 1344))
    levels = [c.out_hw for c in convs if c.name.startswith("head/cls_convs_0@")]
    assert sum(h * w for h, w in levels) == priors.point_grid((800, 1344)).num_points == 22400
    head = [c for c in convs if c.name.startswith("head/")]
    # 8 tower convs 256->256 and 3x3 predictors 256 -> 80 + 4 (o2o) + 80 + 4 + 1 (FCOS o2m) at every point.
    assert am.forward_flops(head) == 2 * 22400 * 9 * 256 * (8 * 256 + 169)
    grads = {(c.weight_grad, c.input_grad) for c in convs if c.name in ("stem", "layer1_2/conv3")}
    assert grads == {(False, False)}
    first = {c.name: c.input_grad for c in convs if c.name.startswith("layer2_0/")}
    assert first == {"layer2_0/conv1": False, "layer2_0/conv2": True, "layer2_0/conv3": True,
                     "layer2_0/downsample_0": False}


@pytest.mark.parametrize("stride", [1, 2])
def test_counter_matches_xla_cost_analysis(stride):
    conv = am.Conv("c", (9, 14), 3, 8, 3, stride)
    x = jax.ShapeDtypeStruct((1, 9, 14, 3), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 3, 8), jnp.float32)

    def apply(x, w):
        return lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    assert jax.eval_shape(apply, x, w).shape[1:3] == conv.out_hw
    compiled = jax.jit(apply).lower(x, w).compile()
    xla = am.cost_figures(compiled)["flops"]
    assert xla == pytest.approx(am.forward_flops([conv], skip_padding=True), rel=0.02)
    assert not np.isclose(am.forward_flops([conv]), am.forward_flops([conv], skip_padding=True))


def test_backward_rule_matches_xla_cost_analysis():
    # conv1 (input not differentiated, trainable kernel): forward + weight gradient; conv2 (stride 2): forward +
    # weight gradient + input gradient. The loss weights the output by a random array, so the output gradient is no
    # constant XLA could fold. XLA's count of the gradient program is the counter's plus a few elementwise ops.
    first, second = am.Conv("1", (16, 16), 8, 16, 3, 1, input_grad=False), am.Conv("2", (16, 16), 16, 16, 3, 2)
    shapes = [jax.ShapeDtypeStruct(s, jnp.float32)
              for s in ((3, 3, 8, 16), (3, 3, 16, 16), (2, 16, 16, 8), (2, 8, 8, 16))]

    def conv(x, w, stride):
        return lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def loss(w1, w2, x, weights):
        return jnp.sum(conv(conv(x, w1, 1), w2, 2) * weights)

    # value_and_grad, as the train step: with the gradients alone XLA drops conv2's forward (nothing reads it).
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*shapes).compile()
    xla = am.cost_figures(compiled)["flops"]
    assert xla == pytest.approx(2 * am.train_flops([first, second], skip_padding=True), rel=0.05)
