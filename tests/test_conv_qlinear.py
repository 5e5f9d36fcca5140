"""int8 convolutions on int8 kernels: the host int8 preset turns a CNN's chained convs into QDQ that ONNX Runtime
fuses into QLinearConv (counted in its optimized graph), close to the float encoder; a lone conv stays weight-only."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from edgemfm.profiles import load_profile
from edgemfm.quantizers import presets
from edgemfm.quantizers.apply import quantize_component
from edgemfm.quantizers.context import Context

CONVS = 8  # the tiny encoder's: stem, two inverted-residual blocks of three, head


class TinyConvEncoder(torch.nn.Module):
    """EfficientNet-Lite's shape in miniature: conv + ReLU6, depthwise + ReLU6, projection, a residual Add."""

    def __init__(self):
        super().__init__()
        conv = torch.nn.Conv2d
        self.stem = conv(3, 32, 3, stride=2, padding=1)  # 864 weights: under MIN_PARAMS, joins the chain anyway
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleList([conv(32, 96, 1), conv(96, 96, 5, padding=2, groups=96), conv(96, 32, 1)])
            for _ in range(2)
        )
        self.head = conv(32, 64, 1)

    def forward(self, pixel_values):
        x = torch.nn.functional.relu6(self.stem(pixel_values))
        for expand, depthwise, project in self.blocks:
            x = x + project(torch.nn.functional.relu6(depthwise(torch.nn.functional.relu6(expand(x)))))
        return torch.nn.functional.relu6(self.head(x)).mean(dim=(2, 3))


class LonePatchConv(torch.nn.Module):
    """A ViT's patch embedding: one conv, then rows."""

    def __init__(self):
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 32, 8, stride=8)

    def forward(self, pixel_values):
        return self.patch(pixel_values).flatten(2).transpose(1, 2)


def _export(module, path):
    torch.manual_seed(0)
    module = module.eval()
    torch.onnx.export(
        module, (torch.randn(1, 3, 32, 32),), str(path), input_names=["pixel_values"], dynamo=True, external_data=False
    )
    return path


def _images(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"pixel_values": rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)} for _ in range(n)]


def _quantize(src, dst, device: str, tmp_path):
    recipe = presets.recipe_for(load_profile(device), "int8")
    return quantize_component(
        src, dst, "vision_encoder", recipe, Context(_images(16, 0), load_profile(device), tmp_path)
    )


def _optimized_ops(path, tmp_path) -> Counter:
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def _run(path, feeds) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, f)[0] for f in feeds])


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return _export(TinyConvEncoder(), tmp_path_factory.mktemp("cnn") / "fp32.onnx")


def test_the_host_preset_fuses_every_chained_conv_into_qlinearconv(encoder, tmp_path):
    report = _quantize(encoder, tmp_path / "int8.onnx", "host", tmp_path)
    ops = _optimized_ops(tmp_path / "int8.onnx", tmp_path)
    assert ops["QLinearConv"] == CONVS and ops["Conv"] == 0
    assert ops["QLinearAdd"] == 2  # the residuals stay int8 too
    # one QuantizeLinear at the input, one DequantizeLinear before the mean: no re-quantization between convs
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1 and ops["Clip"] == 0
    assert report.quantized_units == CONVS - 1 and "QLinearConv" in report.notes["vision_encoder/stem"]
    assert "vision_encoder/stem" not in report.float_units


def test_the_int8_encoder_stays_close_to_the_float_one(encoder, tmp_path):
    _quantize(encoder, tmp_path / "int8.onnx", "host", tmp_path)
    held_out = _images(24, 1)
    ref, got = _run(encoder, held_out), _run(tmp_path / "int8.onnx", held_out)
    cosine = np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert cosine.min() > 0.99
    assert np.abs(got - ref).max() <= 0.1 * np.abs(ref).max()


def test_a_profile_without_qlinear_keeps_weight_only_convs(encoder, tmp_path):
    assert load_profile("pi5").int8_conv == "weight-only"
    _quantize(encoder, tmp_path / "int8.onnx", "pi5", tmp_path)
    ops = _optimized_ops(tmp_path / "int8.onnx", tmp_path)
    assert ops["QLinearConv"] == 0 and ops["QuantizeLinear"] == 0


def test_a_lone_conv_stays_weight_only(tmp_path):
    src = _export(LonePatchConv(), tmp_path / "patch.onnx")
    _quantize(src, tmp_path / "int8.onnx", "host", tmp_path)
    ops = _optimized_ops(tmp_path / "int8.onnx", tmp_path)
    assert ops["QLinearConv"] == 0 and ops["QuantizeLinear"] == 0


def test_a_conv_whose_int8_weights_cost_the_output_too_much_stays_float_with_those_before_it(
    encoder, tmp_path, monkeypatch
):
    from edgemfm.quantizers import conv_qlinear

    measured = conv_qlinear.sensitive
    first = {}

    def only_the_first_block(model, convs, feeds):  # the real measurement, then the first block's depthwise
        out = measured(model, convs, feeds)
        assert out == {}  # random weights: no conv of the tiny encoder is sensitive at SENSITIVE_DB
        depthwise = [u for u in convs if u.shape[1] == 1]  # [out, in / groups, kh, kw]: groups == out
        first.setdefault(depthwise[0].name, 10.0)
        return dict(first)

    monkeypatch.setattr(conv_qlinear, "sensitive", only_the_first_block)
    report = _quantize(encoder, tmp_path / "int8.onnx", "host", tmp_path)
    ops = _optimized_ops(tmp_path / "int8.onnx", tmp_path)
    # stem, the first block's expand and depthwise convs stay float; the chain starts at its projection
    assert ops["QLinearConv"] == CONVS - 3 and ops["Conv"] + ops["FusedConv"] == 3
    kept = {k: v for k, v in report.float_units.items() if "sensitive" in v or "dB" in v}
    assert len(kept) == 3 and "10.0 dB" in kept[next(iter(first))]
    assert report.quantized_units == CONVS - 3


def test_bias_correction_gives_each_channel_the_mean_its_int8_weights_take_away(encoder):
    import onnx
    from onnx import numpy_helper

    from edgemfm.quantizers import conv_qlinear

    model = onnx.load(str(encoder))
    node = next(n for n in model.graph.node if n.op_type == "Conv" and n.name and _groups(n) > 1)  # first depthwise
    model.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], 1, None))
    means = conv_qlinear.input_means(model, [node.name], _images(16, 0))

    def rounded(correct: bool):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        init = next(i for i in m.graph.initializer if i.name == node.input[1])
        if correct:
            conv_qlinear.corrected(m, means)
        init.CopyFrom(numpy_helper.from_array(conv_qlinear.rounded(numpy_helper.to_array(init)), init.name))
        return m

    def channel_means(m) -> np.ndarray:  # the depthwise conv's output, per channel, on held-out inputs
        import onnxruntime as ort

        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.mean([session.run([node.output[0]], f)[0].mean(axis=(0, 2, 3)) for f in _images(16, 1)], axis=0)

    ref = channel_means(model)
    plain, fixed = np.abs(channel_means(rounded(False)) - ref), np.abs(channel_means(rounded(True)) - ref)
    assert plain.mean() > 0 and fixed.mean() < 0.25 * plain.mean()


def _groups(node) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)
