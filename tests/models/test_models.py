"""The DATE network: layer arithmetic against numpy references, output layout, branch wiring, masks and init."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from date_jax import config as config_lib
from date_jax import priors
from date_jax.models import detector
from date_jax.models.fpn import FPN, resize_nearest
from date_jax.models.head import DATEHead
from date_jax.models.layers import ConvModule, group_norm, torch_conv
from date_jax.models.max_filter import MaxFilter3D, max_filter_3d, resize_bilinear
from date_jax.models.resnet import FrozenBatchNorm, ResNet, max_pool_3x3_s2

RNG = np.random.default_rng(0)


def rng(seed=0):
    """A PRNG key of the 'rbg' implementation: XLA:CPU compiles its initialisers far faster than threefry's."""
    return jax.random.key(seed, impl="rbg")


def make_config(o2o="point", o2m="fcos", style="caffe", dtype="float32", num_classes=3):
    config = config_lib.base_config()
    config.model = config_lib.tiny_model_config(num_classes, o2o, o2m)
    config.model.backbone.style = style
    config.dtype = dtype
    return config


def random_images(batch, h, w):
    return jnp.asarray(RNG.integers(0, 256, (batch, h, w, 3)), jnp.uint8)


# ---------------------------------------------------------------- numpy references (written from PyTorch's formulas)

def np_conv(x, kernel, bias=None, stride=1, pad=0):
    """Direct cross-correlation, zero padding: x [B,H,W,I], kernel [kh,kw,I,O] -> [B,Ho,Wo,O]."""
    b, h, w, _ = x.shape
    kh, kw, _, o = kernel.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    out = np.zeros((b, ho, wo, o))
    for i in range(ho):
        for j in range(wo):
            window = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j] = np.einsum("bhwi,hwio->bo", window, kernel)
    return out if bias is None else out + bias


def np_max_pool(x, kernel, stride, pad):
    """Max pool with -inf padding: [B,H,W,C] -> [B,Ho,Wo,C]."""
    b, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
    ho, wo = (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1
    out = np.empty((b, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            out[:, i, j] = xp[:, i * stride:i * stride + kernel, j * stride:j * stride + kernel].max(axis=(1, 2))
    return out


def np_bilinear(x, out_h, out_w):
    """PyTorch upsample_bilinear2d, align_corners=False, one output pixel at a time: [B,h,w,C] -> [B,H,W,C]."""
    _, h, w, _ = x.shape

    def source(dst, in_size, out_size):
        real = max((dst + 0.5) * (in_size / out_size) - 0.5, 0.0)
        i0 = int(real)
        i1 = i0 + 1 if i0 < in_size - 1 else i0
        return i0, i1, real - i0

    out = np.empty((x.shape[0], out_h, out_w, x.shape[3]))
    for i in range(out_h):
        y0, y1, ly = source(i, h, out_h)
        for j in range(out_w):
            x0, x1, lx = source(j, w, out_w)
            out[:, i, j] = ((1 - ly) * ((1 - lx) * x[:, y0, x0] + lx * x[:, y0, x1])
                            + ly * ((1 - lx) * x[:, y1, x0] + lx * x[:, y1, x1]))
    return out


def np_nearest(x, out_h, out_w):
    """PyTorch legacy nearest with an explicit size: source index floor(dst * in / out)."""
    _, h, w, _ = x.shape
    rows = [min(int(math.floor(i * h / out_h)), h - 1) for i in range(out_h)]
    cols = [min(int(math.floor(j * w / out_w)), w - 1) for j in range(out_w)]
    return x[:, rows][:, :, cols]


def np_group_norm(x, groups, scale, bias, eps=1e-5):
    b, h, w, c = x.shape
    g = x.reshape(b, h * w, groups, c // groups).astype(np.float64)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(b, h, w, c) * scale + bias


def np_max_filter_3d(features, kernel=3, depth=3):
    """DeFCN: stack the resized neighbours along depth, MaxPool3d(k=(3,3,3), stride 1, pad 1), slice level l."""
    out = []
    for level, target in enumerate(features):
        lo, hi = max(0, level - 1), min(len(features) - 1, level + 1)
        h, w = target.shape[1:3]
        stack = np.stack([np_bilinear(features[k], h, w) for k in range(lo, hi + 1)], axis=1)   # [B,D,H,W,C]
        padded = np.pad(stack, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
        d = min(level, 1) + 1                                   # the slice of level l, in padded coordinates
        result = np.empty_like(target, dtype=np.float64)
        for i in range(h):
            for j in range(w):
                result[:, i, j] = padded[:, d - 1:d + 2, i:i + kernel, j:j + kernel].max(axis=(1, 2, 3))
        out.append(result)
    return out


# ---------------------------------------------------------------- layers

@pytest.mark.parametrize("size", [(9, 9), (10, 10), (13, 8), (7, 12)])
@pytest.mark.parametrize("kernel_size,stride", [(3, 2), (7, 2), (1, 2), (3, 1)])
def test_conv_matches_numpy(size, kernel_size, stride):
    x = RNG.standard_normal((2, *size, 3)).astype(np.float32)
    conv = torch_conv(5, kernel_size, stride, use_bias=True)
    variables = conv.init(rng(1), jnp.asarray(x))
    variables = {"params": {"kernel": variables["params"]["kernel"],
                            "bias": jnp.asarray(RNG.standard_normal(5), jnp.float32)}}
    got = np.asarray(conv.apply(variables, jnp.asarray(x)))
    want = np_conv(x, np.asarray(variables["params"]["kernel"]), np.asarray(variables["params"]["bias"]),
                   stride, kernel_size // 2)
    assert got.shape == want.shape
    assert got.shape[1:3] == tuple(-(-s // stride) for s in size)      # ceil(H / stride): symmetric padding
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [(9, 9), (10, 10), (13, 8), (7, 12), (2, 3)])
def test_max_pool_pads_with_minus_infinity(size):
    x = -np.abs(RNG.standard_normal((2, *size, 4)).astype(np.float32)) - 1.0      # all negative: 0-padding would show
    got = np.asarray(max_pool_3x3_s2(jnp.asarray(x)))
    want = np_max_pool(x, 3, 2, 1)
    assert got.shape == want.shape == (2, -(-size[0] // 2), -(-size[1] // 2), 4)
    np.testing.assert_array_equal(got, want)
    assert got.max() < 0


@pytest.mark.parametrize("in_hw,out_hw", [((25, 25), (13, 13)), ((13, 13), (25, 25)), ((7, 7), (13, 13)),
                                          ((13, 21), (7, 11)), ((3, 2), (13, 21)), ((4, 4), (8, 8))])
def test_bilinear_resize_matches_pytorch_formula(in_hw, out_hw):
    x = RNG.standard_normal((2, *in_hw, 3)).astype(np.float32)
    got = np.asarray(resize_bilinear(jnp.asarray(x), out_hw))
    np.testing.assert_allclose(got, np_bilinear(x, *out_hw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_hw,out_hw", [((7, 11), (13, 21)), ((4, 6), (8, 12)), ((2, 1), (3, 2)), ((5, 5), (9, 9))])
def test_nearest_resize_matches_pytorch_formula(in_hw, out_hw):
    x = RNG.standard_normal((1, *in_hw, 2)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(resize_nearest(jnp.asarray(x), out_hw)), np_nearest(x, *out_hw))


def test_max_filter_3d_matches_numpy_maxpool3d():
    sizes = [(9, 13), (5, 7), (3, 4), (2, 2), (1, 1)]
    features = [RNG.standard_normal((2, h, w, 3)).astype(np.float32) for h, w in sizes]
    got = jax.jit(max_filter_3d)([jnp.asarray(f) for f in features])
    for g, w in zip(got, np_max_filter_3d(features)):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-5)


def test_max_filter_block_residual_groupnorm_relu():
    sizes = [(9, 9), (5, 5), (3, 3)]
    features = [RNG.standard_normal((1, h, w, 8)).astype(np.float32) for h, w in sizes]
    block = MaxFilter3D(channels=8, num_groups=2)
    variables = jax.jit(block.init)(rng(), [jnp.asarray(f) for f in features])
    p = jax.tree_util.tree_map(np.asarray, variables["params"])
    p["norm"]["scale"] = RNG.uniform(0.5, 1.5, 8).astype(np.float32)
    p["norm"]["bias"] = RNG.standard_normal(8).astype(np.float32)
    got = jax.jit(block.apply)({"params": p}, [jnp.asarray(f) for f in features])
    convolved = [np_conv(f, p["conv"]["kernel"], p["conv"]["bias"], 1, 1) for f in features]
    for g, m, f in zip(got, np_max_filter_3d(convolved), features):
        want = np.maximum(np_group_norm(m + f, 2, p["norm"]["scale"], p["norm"]["bias"]), 0)
        np.testing.assert_allclose(np.asarray(g), want, rtol=1e-4, atol=1e-4)


def test_frozen_batch_norm_uses_running_stats_and_never_updates():
    x = RNG.standard_normal((2, 5, 5, 6)).astype(np.float32)
    bn = FrozenBatchNorm()
    variables = bn.init(rng(), jnp.asarray(x))
    assert "params" not in variables and set(variables["batch_stats"]) == {"scale", "bias", "mean", "var"}
    stats = {k: RNG.uniform(0.5, 2.0, 6).astype(np.float32) for k in ("scale", "bias", "mean", "var")}
    got, updated = bn.apply({"batch_stats": stats}, jnp.asarray(x), mutable=["batch_stats"])
    want = (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * stats["scale"] + stats["bias"]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    for k in stats:
        np.testing.assert_array_equal(np.asarray(updated["batch_stats"][k]), stats[k])


def test_group_norm_matches_numpy():
    x = RNG.standard_normal((2, 4, 6, 8)).astype(np.float32) * 3 + 1
    gn = group_norm(4, jnp.float32)
    scale = RNG.uniform(0.5, 1.5, 8).astype(np.float32)
    bias = RNG.standard_normal(8).astype(np.float32)
    got = gn.apply({"params": {"scale": scale, "bias": bias}}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), np_group_norm(x, 4, scale, bias), rtol=1e-4, atol=1e-4)


def test_conv_module_tower_layer():
    x = RNG.standard_normal((1, 6, 7, 8)).astype(np.float32)
    layer = ConvModule(8, 3, use_bias=False, num_groups=2, activate=True)
    variables = jax.jit(layer.init)(rng(), jnp.asarray(x))
    assert set(variables["params"]) == {"conv", "gn"} and "bias" not in variables["params"]["conv"]
    kernel = np.asarray(variables["params"]["conv"]["kernel"])
    want = np.maximum(np_group_norm(np_conv(x, kernel, None, 1, 1), 2, 1.0, 0.0), 0)
    np.testing.assert_allclose(np.asarray(jax.jit(layer.apply)(variables, jnp.asarray(x))), want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- backbone and neck

@pytest.mark.parametrize("style,stride_on", [("caffe", "conv1"), ("pytorch", "conv2")])
def test_bottleneck_stride_placement(style, stride_on):
    backbone = ResNet(depth=50, style=style, base_width=4, stage_blocks=(1, 1, 1, 1))
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(backbone.init, jax.random.key(0), x)
    outs, state = jax.eval_shape(
        lambda v, x: backbone.apply(v, x, capture_intermediates=True, mutable=["intermediates"]), variables, x)
    block = state["intermediates"]["layer2_0"]
    sizes = {name: block[name]["__call__"][0].shape[1] for name in ("conv1", "conv2", "conv3")}
    # stage 2 input is 16 x 16 (64 / 4); the strided conv halves it
    assert sizes[stride_on] == 8 and sizes["conv3"] == 8
    assert sizes["conv1"] == (8 if style == "caffe" else 16)
    assert [o.shape[-1] for o in outs] == [16, 32, 64, 128]                  # 4 * planes


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_resnet_block_counts_and_output_sizes(depth):
    backbone = ResNet(depth=depth, base_width=4)
    shapes = jax.eval_shape(backbone.init, jax.random.key(0), jnp.zeros((1, 65, 97, 3)))
    blocks = {name.split("_")[0]: 0 for name in shapes["params"] if name.startswith("layer")}
    for name in shapes["params"]:
        if name.startswith("layer"):
            blocks[name.split("_")[0]] += 1
    expected = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    assert tuple(blocks[f"layer{s}"] for s in range(1, 5)) == expected
    outs = jax.eval_shape(backbone.apply, shapes, jnp.zeros((1, 65, 97, 3)))
    assert [o.shape[1:3] for o in outs[1:]] == list(priors.level_shapes((65, 97))[:3])


def test_fpn_matches_numpy_reference():
    feats = [RNG.standard_normal((1, h, w, c)).astype(np.float32)
             for (h, w), c in zip([(17, 25), (9, 13), (5, 7), (3, 4)], [4, 6, 8, 10])]
    fpn = FPN(out_channels=5)
    variables = jax.jit(fpn.init)(rng(), [jnp.asarray(f) for f in feats])
    p = jax.tree_util.tree_map(lambda a: np.asarray(a) + RNG.standard_normal(a.shape).astype(np.float32) * 0.1,
                               variables["params"])
    got = jax.jit(fpn.apply)({"params": p}, [jnp.asarray(f) for f in feats])

    def conv(name, x, stride=1):
        k = p[name]["conv"]["kernel"]
        return np_conv(x, k, p[name]["conv"]["bias"], stride, k.shape[0] // 2)

    lat = [conv(f"lateral_convs_{i}", f) for i, f in enumerate(feats[1:])]
    lat[1] = lat[1] + np_nearest(lat[2], *lat[1].shape[1:3])
    lat[0] = lat[0] + np_nearest(lat[1], *lat[0].shape[1:3])
    outs = [conv(f"fpn_convs_{i}", x) for i, x in enumerate(lat)]
    p6 = conv("fpn_convs_3", outs[2], 2)
    p7 = conv("fpn_convs_4", np.maximum(p6, 0), 2)
    want = outs + [p6, p7]
    assert [g.shape[1:3] for g in got] == [(9, 13), (5, 7), (3, 4), (2, 2), (1, 1)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- the detector

VARIANTS = [(o2o, o2m) for o2o, o2m in itertools.product(("point", "3dmf", "none"), ("fcos", "retina", "none"))
            if (o2o, o2m) != ("none", "none")]


SHAPE_CASES = ([(o2o, o2m, "caffe", (65, 97)) for o2o, o2m in VARIANTS]
               + [("point", "fcos", style, hw) for style in ("caffe", "pytorch") for hw in ((64, 96), (100, 61))]
               + [("3dmf", "retina", "pytorch", (64, 64))])


@pytest.mark.parametrize("o2o,o2m,style,hw", SHAPE_CASES)
def test_output_shapes_of_every_variant(o2o, o2m, style, hw):
    model = detector.build_model(make_config(o2o, o2m, style))
    images = jax.ShapeDtypeStruct((2, *hw, 3), jnp.uint8)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    out = jax.eval_shape(model.apply, variables, images)
    n = priors.point_grid(hw).num_points
    expected = {}
    if o2o != "none":
        expected.update(o2o_logits=(2, n, 3), o2o_ltrb=(2, n, 4))
    if o2o == "3dmf":
        expected.update(o2o_filter=(2, n, 1))
    if o2m == "fcos":
        expected.update(o2m_logits=(2, n, 3), o2m_ltrb=(2, n, 4), o2m_centerness=(2, n, 1))
    if o2m == "retina":
        expected.update(o2m_logits=(2, n * 9, 3), o2m_deltas=(2, n * 9, 4))
    assert {k: v.shape for k, v in out.items()} == expected
    assert all(v.dtype == jnp.float32 for v in out.values())


def test_both_branches_none_is_an_error():
    model = detector.build_model(make_config("none", "none"))
    with pytest.raises(ValueError, match="config.model.o2o"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.uint8))


def test_unknown_branch_and_style_are_errors():
    with pytest.raises(ValueError, match="style"):
        detector.build_model(make_config(style="tf"))
    model = detector.build_model(make_config(o2m="atss"))
    with pytest.raises(ValueError, match="config.model.o2m"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.uint8))


SCALES = (0.5, 1.5, 0.75, 2.0, 1.25)     # distinct per-level scales expose a level mix-up


class Run:
    """A module, its initial variables, and a jitted forward with distinct Scales that captures the per-level conv
    outputs of the head (`head_path` locates the DATEHead inside the module)."""

    def __init__(self, model, inputs, head_path=(), initial=None):
        self.model, self.inputs = model, inputs
        self.initial = jax.jit(model.init)(rng(), inputs) if initial is None else initial
        params = traverse_util.flatten_dict(self.initial["params"])
        for level, s in enumerate(SCALES):
            params[(*head_path, f"scales_{level}", "scale")] = jnp.float32(s)
        self.variables = {**self.initial, "params": traverse_util.unflatten_dict(params)}
        self.forward = jax.jit(lambda v, x: self.model.apply(v, x, capture_intermediates=True,
                                                             mutable=["intermediates"]))
        out, state = self.forward(self.variables, inputs)
        self.out = jax.tree_util.tree_map(np.asarray, out)
        head = state["intermediates"]
        for name in head_path:
            head = head[name]
        self.head = jax.tree_util.tree_map(np.asarray, head)

    def apply_with(self, path, value):
        """Outputs with one parameter replaced."""
        params = traverse_util.flatten_dict(self.variables["params"])
        params[path] = value
        out, _ = self.forward({**self.variables, "params": traverse_util.unflatten_dict(params)}, self.inputs)
        return jax.tree_util.tree_map(np.asarray, out)


@pytest.fixture(scope="module")
def fcos_run():
    """The whole tiny DATE-3DMF-F detector on two odd-sized uint8 images."""
    model = detector.build_model(make_config("3dmf", "fcos"))
    initial = detector.init_variables(model, rng(), (65, 97))
    assert set(initial) == {"params", "batch_stats"}
    return Run(model, random_images(2, 65, 97), ("bbox_head",), initial)


@pytest.fixture(scope="module")
def retina_run():
    """A narrow DATE head with the RetinaNet o2m branch on random P3-P7 features of a 65 x 97 image."""
    head = DATEHead(num_classes=3, feat_channels=8, stacked_convs=1, num_groups=2, o2o="point", o2m="retina")
    features = [jnp.asarray(RNG.standard_normal((2, h, w, 8)), jnp.float32) for h, w in priors.level_shapes((65, 97))]
    return Run(head, features)


def _flat(levels):
    return np.concatenate([x.reshape(x.shape[0], -1, x.shape[-1]) for x in levels], axis=1)


def test_o2o_and_fcos_outputs_follow_the_per_level_maps(fcos_run):
    out, o2o, o2m = fcos_run.out, fcos_run.head["predictors_0"], fcos_run.head["predictors_1"]
    np.testing.assert_allclose(out["o2o_logits"], _flat(o2o["conv_cls"]["__call__"]), rtol=1e-6)
    want_ltrb = [np.maximum(s * x, 0) * stride for x, s, stride in zip(o2o["conv_reg"]["__call__"], SCALES,
                                                                       priors.STRIDES)]
    np.testing.assert_allclose(out["o2o_ltrb"], _flat(want_ltrb), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["o2o_filter"], _flat(o2o["filter"]["__call__"]), rtol=1e-6)
    want_exp = [np.exp(s * x) for x, s in zip(o2m["conv_reg"]["__call__"], SCALES)]
    np.testing.assert_allclose(out["o2m_ltrb"], _flat(want_exp), rtol=1e-5)
    np.testing.assert_allclose(out["o2m_logits"], _flat(o2m["conv_cls"]["__call__"]), rtol=1e-6)
    np.testing.assert_allclose(out["o2m_centerness"], _flat(o2m["conv_ctr"]["__call__"]), rtol=1e-6)
    # level-major then row-major: P4 (5 x 7) cell (3, 5) sits at 9 * 13 + 3 * 7 + 5
    p4 = o2o["conv_cls"]["__call__"][1]
    np.testing.assert_array_equal(out["o2o_logits"][:, 9 * 13 + 3 * 7 + 5], p4[:, 3, 5])
    assert out["o2o_logits"].shape[1] == priors.point_grid((65, 97)).num_points
    # at init the classification bias is the focal prior
    assert out["o2o_logits"].mean() == pytest.approx(-math.log(99), abs=0.05)


def test_retina_layout_is_anchor_minor(retina_run):
    cls_maps = retina_run.head["predictors_1"]["conv_cls"]["__call__"]
    reg_maps = retina_run.head["predictors_1"]["conv_reg"]["__call__"]
    logits, deltas = retina_run.out["o2m_logits"], retina_run.out["o2m_deltas"]
    c = 3
    start = 0
    for level, (cm, rm) in enumerate(zip(cls_maps, reg_maps)):
        h, w = cm.shape[1:3]
        for i, j, a in [(0, 0, 0), (h - 1, w - 1, 8), (h // 2, w // 2, 5)]:
            row = start + (i * w + j) * 9 + a
            np.testing.assert_array_equal(logits[:, row], cm[:, i, j, a * c:(a + 1) * c])
            np.testing.assert_allclose(deltas[:, row], SCALES[level] * rm[:, i, j, a * 4:(a + 1) * 4], rtol=1e-6)
        start += h * w * 9
    assert start == logits.shape[1]


def test_towers_feed_the_right_predictors(fcos_run):
    """Perturbing the reg tower leaves every cls-tower output unchanged and vice versa."""
    cls_outputs = ("o2o_logits", "o2m_logits", "o2m_centerness")
    reg_outputs = ("o2o_ltrb", "o2m_ltrb", "o2o_filter")
    for tower, unchanged, changed in [("reg_convs_0", cls_outputs, reg_outputs),
                                      ("cls_convs_0", reg_outputs, cls_outputs)]:
        path = ("bbox_head", tower, "conv", "kernel")
        kernel = traverse_util.flatten_dict(fcos_run.variables["params"])[path]
        perturbed = fcos_run.apply_with(path, kernel * 3 + 0.05)
        for key in unchanged:
            np.testing.assert_array_equal(perturbed[key], fcos_run.out[key])
        for key in changed:
            assert not np.allclose(perturbed[key], fcos_run.out[key]), (tower, key)


def test_scales_are_shared_by_both_branches(fcos_run):
    path = ("bbox_head", "scales_2", "scale")
    changed = fcos_run.apply_with(path, jnp.float32(3.0))
    grid = priors.point_grid((65, 97))
    on_p5 = grid.levels == 2
    for key in ("o2o_ltrb", "o2m_ltrb"):
        assert not np.allclose(changed[key][:, on_p5], fcos_run.out[key][:, on_p5]), key
        np.testing.assert_array_equal(changed[key][:, ~on_p5], fcos_run.out[key][:, ~on_p5])
    np.testing.assert_array_equal(changed["o2o_logits"], fcos_run.out["o2o_logits"])


def test_normalisation_of_both_styles():
    images = random_images(1, 4, 5)
    x = np.asarray(images, np.float32)
    caffe = np.asarray(detector.normalize_images(images, "caffe"))
    np.testing.assert_allclose(caffe, x[..., ::-1] - np.array([102.9801, 115.9465, 122.7717]), rtol=1e-6, atol=1e-4)
    torch_style = np.asarray(detector.normalize_images(images, "pytorch"))
    want = (x - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    np.testing.assert_allclose(torch_style, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_outputs(fcos_run):
    config = make_config("3dmf", "fcos", dtype="bfloat16")
    model = detector.build_model(config)
    shapes = jax.eval_shape(model.init, jax.random.key(0), fcos_run.inputs)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(fcos_run.variables)
    out = jax.jit(model.apply)(fcos_run.variables, fcos_run.inputs)
    for key, value in out.items():
        assert value.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(value), fcos_run.out[key], rtol=0.1, atol=0.1)


def test_trainable_and_backbone_masks():
    config = make_config()
    model = detector.build_model(config)
    params = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.uint8))["params"]
    for frozen_stages, frozen_prefixes in [(-1, ()), (0, ("conv1",)), (1, ("conv1", "layer1_")),
                                           (2, ("conv1", "layer1_", "layer2_"))]:
        config.model.backbone.frozen_stages = frozen_stages
        mask = traverse_util.flatten_dict(detector.trainable_mask(params, config))
        assert mask.keys() == traverse_util.flatten_dict(params).keys()
        for path, trainable in mask.items():
            frozen = path[0] == "backbone" and path[1].startswith(frozen_prefixes) if frozen_prefixes else False
            assert trainable == (not frozen), path
    bmask = traverse_util.flatten_dict(detector.backbone_mask(params))
    assert all(v == (k[0] == "backbone") for k, v in bmask.items()) and any(bmask.values())


def test_initialisation_follows_spec(fcos_run, retina_run):
    variables = fcos_run.initial
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(variables["params"]).items()}
    prior_bias = -math.log(99)
    for name, value in flat.items():
        if name.startswith("bbox_head") and name.endswith("kernel"):
            assert value.std() == pytest.approx(0.01, rel=0.25), name
        elif name.endswith("conv_cls/bias"):
            np.testing.assert_allclose(value, prior_bias, rtol=1e-6)
        elif name.startswith(("bbox_head", "neck")) and name.endswith("bias"):
            assert np.all(value == 0), name
        elif name.endswith("gn/scale") or name.endswith("norm/scale") or "scales_" in name:
            assert np.all(value == 1), name
        elif name.startswith("neck") and name.endswith("kernel"):
            kh, kw, i, o = value.shape
            assert np.abs(value).max() <= math.sqrt(6 / (kh * kw * (i + o))), name      # xavier uniform bound
        elif name.startswith("backbone") and value.size > 500:
            kh, kw, _, o = value.shape
            assert value.std() == pytest.approx(math.sqrt(2 / (kh * kw * o)), rel=0.25), name   # kaiming fan_out
    retina_bias = np.asarray(retina_run.initial["params"]["predictors_1"]["conv_cls"]["bias"])
    assert retina_bias.shape == (27,)
    np.testing.assert_allclose(retina_bias, prior_bias, rtol=1e-6)
    stats = variables["batch_stats"]["backbone"]["bn1"]
    assert np.all(np.asarray(stats["var"]) == 1) and np.all(np.asarray(stats["mean"]) == 0)


def test_padding_is_zero_after_normalisation():
    """mmdet pads normalised images with 0: pixels outside image_shape must not change the outputs' inputs."""
    from date_jax.models.detector import normalize_images, padding_mask
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 10, 3)).astype(np.uint8)
    shape = np.array([[5, 7], [8, 10]], np.int32)
    mask = np.asarray(padding_mask(jnp.asarray(shape), (8, 10)))
    expected = np.zeros((2, 8, 10), np.float32)
    expected[0, :5, :7] = 1
    expected[1] = 1
    np.testing.assert_array_equal(mask, expected)
    x = np.asarray(normalize_images(jnp.asarray(images), "caffe")) * mask[..., None]
    assert np.all(x[0, 5:] == 0) and np.all(x[0, :, 7:] == 0)
    np.testing.assert_allclose(x[1], images[1, :, :, ::-1] - np.array([102.9801, 115.9465, 122.7717]), atol=1e-4)
