"""PyTorch vs Flax on the same weights (converted by date_jax.convert.mmdet): stride-2 convs, max-pool, GroupNorm,
nearest upsampling, bilinear resizing, and a frozen-BN bottleneck in both styles. Skipped when torch is absent."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from date_jax.convert import mmdet  # noqa: E402
from date_jax.models.fpn import resize_nearest  # noqa: E402
from date_jax.models.layers import group_norm, torch_conv  # noqa: E402
from date_jax.models.max_filter import resize_bilinear  # noqa: E402
from date_jax.models.resnet import Bottleneck, max_pool_3x3_s2  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


def _nchw(x: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _images(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _load(state_dict: dict, template: dict) -> dict:
    """Flax variables for `template` from a PyTorch state_dict, through the converter; every key must be used."""
    found, report = mmdet.match_state_dict({k: v.detach().numpy() for k, v in state_dict.items()}, template)
    assert report.complete, str(report)
    variables: dict = {}
    for (collection, *path), value in found.items():
        node = variables.setdefault(collection, {})
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return variables


@pytest.mark.parametrize("kernel", [1, 3, 7])
@pytest.mark.parametrize("hw", [(13, 13), (12, 17)])
def test_stride2_conv(kernel, hw):
    torch.manual_seed(kernel)
    conv = torch.nn.Conv2d(3, 5, kernel, stride=2, padding=kernel // 2, bias=True)
    x = _images((2, *hw, 3))
    module = torch_conv(5, kernel, 2, use_bias=True)
    template = {"params": {"kernel": jnp.zeros((kernel, kernel, 3, 5)), "bias": jnp.zeros(5)}}
    variables = _load(conv.state_dict(), template)
    got = np.asarray(module.apply(variables, jnp.asarray(x)))
    want = _nhwc(conv(_nchw(x)))
    assert got.shape == want.shape == (2, (hw[0] + 1) // 2, (hw[1] + 1) // 2, 5)
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("hw", [(13, 13), (12, 17)])
def test_max_pool(hw):
    x = _images((2, *hw, 4)) - 3.0          # all negative near the border: padding must act as -inf
    got = np.asarray(max_pool_3x3_s2(jnp.asarray(x)))
    want = _nhwc(torch.nn.MaxPool2d(3, stride=2, padding=1)(_nchw(x)))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, **TOL)


def test_group_norm():
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 16)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = _images((2, 9, 7, 16)) * 3 + 1
    template = {"params": {"scale": jnp.zeros(16), "bias": jnp.zeros(16)}}
    got = np.asarray(group_norm(4, jnp.float32).apply(_load(norm.state_dict(), template), jnp.asarray(x)))
    np.testing.assert_allclose(got, _nhwc(norm(_nchw(x))), **TOL)


@pytest.mark.parametrize("src, dst", [((4, 6), (8, 12)), ((7, 5), (13, 10)), ((13, 25), (25, 49))])
def test_nearest_upsample(src, dst):
    x = _images((1, *src, 3))
    got = np.asarray(resize_nearest(jnp.asarray(x), dst))
    want = _nhwc(F.interpolate(_nchw(x), size=dst, mode="nearest"))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("src, dst", [((25, 25), (13, 13)), ((13, 13), (25, 25)), ((25, 19), (13, 10)),
                                      ((7, 4), (13, 7))])
def test_bilinear_resize(src, dst):
    x = _images((2, *src, 3))
    got = np.asarray(resize_bilinear(jnp.asarray(x), dst))
    want = _nhwc(F.interpolate(_nchw(x), size=dst, mode="bilinear", align_corners=False))
    np.testing.assert_allclose(got, want, **TOL)


class _TorchBottleneck(torch.nn.Module):
    """mmdet Bottleneck with frozen (eval-mode) BN, mmdet names; caffe strides conv1, pytorch strides conv2."""

    def __init__(self, cin: int, planes: int, stride: int, style: str) -> None:
        super().__init__()
        s1, s2 = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = torch.nn.Conv2d(cin, planes, 1, s1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.conv2 = torch.nn.Conv2d(planes, planes, 3, s2, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.conv3 = torch.nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(4 * planes)
        self.downsample = torch.nn.Sequential(torch.nn.Conv2d(cin, 4 * planes, 1, stride, bias=False),
                                              torch.nn.BatchNorm2d(4 * planes))
        for bn in (self.bn1, self.bn2, self.bn3, self.downsample[1]):
            torch.nn.init.normal_(bn.weight)
            torch.nn.init.normal_(bn.bias)
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.downsample(x))


@pytest.mark.parametrize("style", ["caffe", "pytorch"])
def test_frozen_bn_bottleneck(style):
    torch.manual_seed(1)
    block = _TorchBottleneck(8, 4, 2, style).eval()
    x = _images((1, 11, 10, 8))
    flax_block = Bottleneck(4, 2, style)
    template = jax.eval_shape(flax_block.init, jax.random.PRNGKey(0), jnp.asarray(x))
    got = np.asarray(flax_block.apply(_load(block.state_dict(), template), jnp.asarray(x)))
    with torch.no_grad():
        want = _nhwc(block(_nchw(x)))
    np.testing.assert_allclose(got, want, **TOL)


# ----------------------------------------------------------------------------------------------------------------------
# A whole tiny DATE in PyTorch, written from docs/spec.md §2-§3 and §9 with mmdet's module names, against the Flax
# model fed
# the same state_dict through `state_dict_to_variables`.

class _ConvModule(torch.nn.Module):
    def __init__(self, cin, cout, kernel, stride=1, bias=True, groups=0):
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=bias)
        if groups:
            self.gn = torch.nn.GroupNorm(groups, cout)

    def forward(self, x):
        x = self.conv(x)
        return F.relu(self.gn(x)) if hasattr(self, "gn") else x


class _Scale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return x * self.scale


class _TorchResNet(torch.nn.Module):
    def __init__(self, width, blocks, style):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        cin = width
        for s, count in enumerate(blocks):
            planes = width * 2 ** s
            layer = [_TorchBottleneck(cin if b == 0 else 4 * planes, planes, 2 if s and b == 0 else 1, style)
                     for b in range(count)]
            for b, block in enumerate(layer):
                if b:
                    del block.downsample
            setattr(self, f"layer{s + 1}", torch.nn.Sequential(*layer))
            cin = 4 * planes

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        outs = []
        for s in range(1, 5):
            for block in getattr(self, f"layer{s}"):
                x = block(x) if hasattr(block, "downsample") else _identity_block(block, x)
            outs.append(x)
        return outs


def _identity_block(block, x):
    out = F.relu(block.bn1(block.conv1(x)))
    out = F.relu(block.bn2(block.conv2(out)))
    return F.relu(block.bn3(block.conv3(out)) + x)


class _TorchFPN(torch.nn.Module):
    def __init__(self, in_channels, out):
        super().__init__()
        self.lateral_convs = torch.nn.ModuleList(_ConvModule(c, out, 1) for c in in_channels)
        self.fpn_convs = torch.nn.ModuleList([_ConvModule(out, out, 3) for _ in range(3)] +
                                             [_ConvModule(out, out, 3, 2) for _ in range(2)])

    def forward(self, feats):
        lat = [conv(f) for conv, f in zip(self.lateral_convs, feats[1:])]
        for i in (2, 1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
        outs = [conv(x) for conv, x in zip(self.fpn_convs, lat)]
        outs.append(self.fpn_convs[3](outs[-1]))
        outs.append(self.fpn_convs[4](F.relu(outs[-1])))
        return outs


class _TorchMax3D(torch.nn.Module):
    def __init__(self, channels, groups):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, 1, 1)
        self.norm = torch.nn.GroupNorm(groups, channels)

    def forward(self, feats):
        convolved = [self.conv(f) for f in feats]
        outs = []
        for level, f in enumerate(feats):
            lo, hi = max(0, level - 1), min(len(feats) - 1, level + 1)
            stack = torch.stack([F.interpolate(convolved[k], size=f.shape[2:], mode="bilinear", align_corners=False)
                                 if k != level else convolved[k] for k in range(lo, hi + 1)], dim=2)
            pooled = F.max_pool3d(stack, (3, 3, 3), 1, 1)[:, :, min(level, 1)]
            outs.append(F.relu(self.norm(pooled + f)))
        return outs


class _TorchPredictor(torch.nn.Module):
    def __init__(self, feat, outputs, groups=0):
        super().__init__()
        for name, channels in outputs.items():
            setattr(self, name, torch.nn.Conv2d(feat, channels, 3, 1, 1))
        if groups:
            self.max3d = _TorchMax3D(feat, groups)


def _flat(x, k):
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, k)


class _TorchDATE(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        width, feat, c = model.backbone.base_width, model.head.feat_channels, model.num_classes
        self.model = model
        self.backbone = _TorchResNet(width, model.backbone.stage_blocks, model.backbone.style)
        self.neck = _TorchFPN([width * 4 * 2 ** s for s in (1, 2, 3)], model.neck.out_channels)
        head = torch.nn.Module()
        for tower in ("cls_convs", "reg_convs"):
            setattr(head, tower, torch.nn.ModuleList(
                _ConvModule(model.neck.out_channels if i == 0 else feat, feat, 3, bias=False,
                            groups=model.head.num_groups) for i in range(model.head.stacked_convs)))
        head.scales = torch.nn.ModuleList(_Scale() for _ in range(5))
        o2o = {"conv_cls": c, "conv_reg": 4} | ({"filter": 1} if model.o2o == "3dmf" else {})
        o2m = {"conv_cls": c, "conv_reg": 4, "conv_ctr": 1} if model.o2m == "fcos" else {"conv_cls": 9 * c,
                                                                                         "conv_reg": 36}
        head.predictors = torch.nn.ModuleList([
            _TorchPredictor(feat, o2o, model.head.num_groups if model.o2o == "3dmf" else 0),
            _TorchPredictor(feat, o2m)])
        self.bbox_head = head

    def forward(self, images_uint8_rgb):
        if self.model.backbone.style == "caffe":     # Detectron: BGR minus mean; torchvision: RGB, mean and std
            x = images_uint8_rgb.float().flip(-1) - torch.tensor([102.9801, 115.9465, 122.7717])
        else:
            x = (images_uint8_rgb.float() - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor([58.395, 57.12,
                                                                                                   57.375])
        x = x.permute(0, 3, 1, 2)
        feats = self.neck(self.backbone(x))
        head, c = self.bbox_head, self.model.num_classes
        cls, reg = feats, feats
        for layer in head.cls_convs:
            cls = [layer(f) for f in cls]
        for layer in head.reg_convs:
            reg = [layer(f) for f in reg]
        o2o, o2m = head.predictors
        out = {"o2o_logits": [_flat(o2o.conv_cls(f), c) for f in cls],
               "o2o_ltrb": [_flat(F.relu(s(o2o.conv_reg(f))) * stride, 4)
                            for f, s, stride in zip(reg, head.scales, (8, 16, 32, 64, 128))]}
        if hasattr(o2o, "max3d"):
            out["o2o_filter"] = [_flat(o2o.filter(f), 1) for f in o2o.max3d(reg)]
        out["o2m_logits"] = [_flat(o2m.conv_cls(f), c) for f in cls]
        if self.model.o2m == "fcos":
            out["o2m_ltrb"] = [_flat(torch.exp(s(o2m.conv_reg(f))), 4) for f, s in zip(reg, head.scales)]
            out["o2m_centerness"] = [_flat(o2m.conv_ctr(f), 1) for f in cls]
        else:
            out["o2m_deltas"] = [_flat(s(o2m.conv_reg(f)), 4) for f, s in zip(reg, head.scales)]
        return {k: torch.cat(v, 1).detach().numpy() for k, v in out.items()}


def _well_scaled_state_dict(shapes, seed):
    """Random values that keep activations O(1) through a deep random network."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith(("running_var", ".scale")) or (key.endswith("weight") and len(shape) == 1):
            state[key] = torch.from_numpy(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif len(shape) == 4:
            state[key] = torch.from_numpy((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32))
        else:
            state[key] = torch.from_numpy((0.1 * rng.standard_normal(shape)).astype(np.float32))
    return state


@pytest.mark.parametrize("o2o, o2m, style", [("point", "fcos", "caffe"), ("3dmf", "retina", "pytorch")])
def test_whole_tiny_date_matches_pytorch(o2o, o2m, style):
    from date_jax import config as config_lib
    from date_jax.models import detector
    from tools.make_torch_fixtures import official_key_shapes
    config = config_lib.base_config()
    config.model = config_lib.tiny_model_config(2, o2o, o2m)
    config.model.backbone.update(depth=50, style=style, base_width=4, stage_blocks=(1, 1, 1, 1))
    state = _well_scaled_state_dict(official_key_shapes(config.model), seed=3)
    reference = _TorchDATE(config.model).eval()
    reference.load_state_dict(state, strict=True)          # docs/spec.md §10 names are exactly this module tree's
    images = np.random.default_rng(0).integers(0, 256, (2, 96, 128, 3), dtype=np.uint8)
    with torch.no_grad():
        want = reference(torch.from_numpy(images))
    variables = mmdet.state_dict_to_variables({k: v.numpy() for k, v in state.items()}, config)
    got = jax.jit(detector.build_model(config).apply)(variables, jnp.asarray(images))
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].shape == want[key].shape, key
        np.testing.assert_allclose(np.asarray(got[key]), want[key], rtol=1e-4, atol=1e-4, err_msg=key)
