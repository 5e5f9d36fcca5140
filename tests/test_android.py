"""The Android sample (samples/android): its APK builds offline from pinned inputs, and its Java
decode loop gives the same tokens as the Python runtime.

The build needs the inputs that samples/android/ci/fetch_inputs.sh caches (ORT's Android AAR,
D8, android.jar, ORT's Linux library) and Debian's aapt, zipalign, apksigner, dexdump and a
JDK. When those cannot be had, every test here is skipped with the reason; nothing else skips.

What runs where:
- the APK checks read the real APK: aapt's badging, apksigner's verification, dexdump's classes
  and the packed bundle; nothing here runs the APK (no emulator: that needs a phone or KVM);
- the parity tests run the app's org.edgemfm.bundle classes, unchanged, on this machine's JVM with
  ORT 1.29.0 (the APK's release) through samples/android/host/ort_jni_host.c, against the same
  bundle that `edgemfm run` reads (ORT 1.32.0).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ANDROID = REPO / "samples" / "android"
CI = ANDROID / "ci"
APP_ID = "org.edgemfm.sample"
UNAVAILABLE = (2, 3)  # fetch_inputs.sh: an input could not be fetched / a Debian tool is missing


def _run(cmd: list[str], timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def android_inputs() -> None:
    """Fetches (or finds in the cache) every pinned input; skips the module when it cannot."""
    r = _run(["bash", str(CI / "fetch_inputs.sh")])
    if r.returncode in UNAVAILABLE:
        pytest.skip(f"Android build inputs cannot be fetched: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def android_bundle(tmp_path_factory, placeholder_model) -> Path:
    """The placeholder model exported for the android profile (`edgemfm export --device android`)."""
    import edgemfm

    return edgemfm.export(
        edgemfm.ExportConfig(
            model=placeholder_model, device="android", out=tmp_path_factory.mktemp("android") / "bundle"
        )
    )


@pytest.fixture(scope="module")
def apk(android_inputs, android_bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("apk") / "edgemfm-sample.apk"
    r = _run(["bash", str(CI / "build_apk.sh"), "--bundle", str(android_bundle), "--out", str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.fixture(scope="module")
def host_run(android_inputs, tmp_path_factory) -> Path:
    """samples/android/ci/build_host.sh's runner for the app's Java classes on this JVM."""
    out = tmp_path_factory.mktemp("host")
    r = _run(["bash", str(CI / "build_host.sh"), str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    return out / "run.sh"


def test_badging_shows_a_launchable_arm64_app(apk):
    r = _run(["aapt", "dump", "badging", str(apk)])
    assert r.returncode == 0, r.stderr
    assert f"package: name='{APP_ID}'" in r.stdout
    assert f"launchable-activity: name='{APP_ID}.MainActivity'" in r.stdout
    assert "native-code: 'arm64-v8a'" in r.stdout.splitlines()
    assert "sdkVersion:'24'" in r.stdout  # ORT's AAR needs API 24


def test_apk_signature_verifies(apk):
    r = _run(["apksigner", "verify", "--verbose", str(apk)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Verified using v2 scheme (APK Signature Scheme v2): true" in r.stdout


def test_dex_holds_the_app_and_onnx_runtime(apk):
    r = _run(["dexdump", str(apk)])
    assert r.returncode == 0, r.stderr
    classes = {line.split("'")[1] for line in r.stdout.splitlines() if "Class descriptor" in line}
    for cls in (
        "Lorg/edgemfm/sample/MainActivity;",
        "Lorg/edgemfm/bundle/MultimodalModel;",
        "Lorg/edgemfm/bundle/BpeTokenizer;",
        "Lai/onnxruntime/OrtSession;",
        "Lai/onnxruntime/OnnxTensor;",
    ):
        assert cls in classes, f"{cls} is not in classes.dex"


def test_apk_packs_the_bundle_and_the_arm64_runtime(apk, android_bundle):
    manifest = json.loads((android_bundle / "manifest.json").read_text())
    with zipfile.ZipFile(apk) as z:
        names = set(z.namelist())
        assert json.loads(z.read("assets/bundle/manifest.json")) == manifest
        for name, entry in manifest["files"].items():
            data = z.read(f"assets/bundle/{name}")
            assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"]), name
            assert z.getinfo(f"assets/bundle/{name}").compress_type == zipfile.ZIP_STORED, name
    assert {"lib/arm64-v8a/libonnxruntime.so", "lib/arm64-v8a/libonnxruntime4j_jni.so"} <= names
    assert {n.split("/")[1] for n in names if n.startswith("lib/")} == {"arm64-v8a"}
    assert {"manifest.json", "text_decoder.onnx", "token_embedding.onnx", "vision_encoder.onnx"} <= {
        n.removeprefix("assets/bundle/") for n in names
    }


def _java(host_run: Path, *args: str) -> dict:
    r = _run(["bash", str(host_run), *args], timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "prompt, with_image, max_new",
    [
        ("What is in the picture?", True, 24),
        ("Describe the colours, then count the shapes: 1, 2, 3.", True, 16),
        ("Say hello in French — «bonjour» — and in Japanese: こんにちは", False, 16),
    ],
)
def test_java_decode_loop_gives_the_tokens_of_edgemfm_run(
    host_run, android_bundle, picture, prompt, with_image, max_new, capsys
):
    from edgemfm.cli import main
    from edgemfm.runtimes.pipeline import load

    images = [str(picture)] if with_image else []
    java = _java(
        host_run,
        "--bundle",
        str(android_bundle),
        "--prompt",
        prompt,
        "--max-new-tokens",
        str(max_new),
        *(["--image", str(picture)] if with_image else []),
    )
    python_tokens = list(load(android_bundle).generate_tokens(prompt, images=images, max_new_tokens=max_new))
    assert java["tokens"] == python_tokens
    assert len(python_tokens) > 0  # an empty answer would prove nothing

    argv = ["run", str(android_bundle), "--prompt", prompt, "--max-new-tokens", str(max_new)]
    assert main(argv + sum((["--image", i] for i in images), [])) == 0
    assert "".join(java["pieces"]) == capsys.readouterr().out.removesuffix("\n")


def test_java_image_preprocessing_matches_python(host_run, android_bundle, picture, tmp_path):
    """The Java resize reproduces Pillow's bicubic filter: the tensors agree to float rounding."""
    from edgemfm.bundle import read_manifest
    from edgemfm.runtimes.preprocess import preprocess_image

    pixels = tmp_path / "pixels.f32"
    _java(
        host_run,
        "--bundle",
        str(android_bundle),
        "--image",
        str(picture),
        "--max-new-tokens",
        "1",
        "--pixels",
        str(pixels),
    )
    spec = read_manifest(android_bundle).preprocess.image
    want = preprocess_image(picture, spec)
    got = np.fromfile(pixels, dtype="<f4").reshape(want.shape)
    assert np.abs(got - want).max() <= 1e-6


def _byte_level_tokenizer(kind: str):
    """Byte-level BPE tokenizers trained here: SmolLM2's layout and GPT-2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    corpus = [
        "The quick brown fox jumps over the lazy dog. It's 2024, and they'll say we've won 3-1!",
        "Edge devices run multimodal models: vision encoders, audio encoders and a text decoder.",
        "    indented code(x) {return x + 1;}\n\tTabs, new lines\n\nand   spaces.",
        "Ça coûte 12,50 € — naïve café, 東京タワー, 👍🏽 emoji.",
    ] * 20
    tok = Tokenizer(models.BPE())
    if kind == "smollm2":  # Digits then ByteLevel with the GPT-2 regex, as SmolLM2's tokenizer.json
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    else:  # GPT-2: ByteLevel with a prefix space, BOS added by the post-processor
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
        specials = ["<|endoftext|>"]
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    if kind == "gpt2":
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tok.token_to_id("<|endoftext|>"))]
        )
    return tok


@pytest.mark.parametrize("kind", ["smollm2", "gpt2"])
def test_java_tokenizer_matches_hugging_face_tokenizers(host_run, tmp_path, kind):
    tok = _byte_level_tokenizer(kind)
    texts = [
        "The quick brown fox",
        "I'm sure they'll say it's 2024 and we've 12345 items.",
        "  leading, trailing   ",
        "line one\nline two\r\n\ttabbed\u00a0nbsp\u2003em space",
        "naïve café — 東京 👍🏽 ∑x² ½",
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
        "unseen wordsmithery zzz qqq",
        "",
    ]
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    r = _run(
        ["bash", str(host_run), "--tokenize", str(tmp_path / "tokenizer.json"), str(tmp_path / "texts.json")],
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    for text, line in zip(texts, r.stdout.splitlines(), strict=True):
        java = json.loads(line)
        want = tok.encode(text).ids
        assert java["ids"] == want, text
        assert java["decoded"] == tok.decode(want), text


def test_fetch_is_cached_and_pinned(android_inputs):
    """A second fetch finds everything in the cache; every input names a version and a sha256."""
    r = _run(["bash", str(CI / "fetch_inputs.sh")], timeout=60)
    assert r.returncode == 0 and "ready in" not in r.stdout, r.stdout + r.stderr
    script = (CI / "fetch_inputs.sh").read_text()
    for pin in ("ORT_NPM_SHA=", "ORT_NODE_NPM_SHA=", "MOBSF_SHA=", "ANDROID_DEB_SHA=", "ANDROID_JAR_SHA="):
        value = script.split(pin, 1)[1].split()[0]
        assert len(value) == 64 and int(value, 16) >= 0, pin
    cache = Path(os.environ.get("EDGEMFM_ANDROID_CACHE", Path.home() / ".cache/edgemfm/android"))
    assert not list(cache.glob(".tmp-*")), "a fetch left a temporary folder behind"


def test_put_bundle_copies_a_verified_bundle_or_nothing(android_bundle, tmp_path):
    import shutil

    dest = tmp_path / "assets" / "bundle"
    r = _run(["bash", str(CI / "put_bundle.sh"), str(android_bundle), str(dest)])
    assert r.returncode == 0, r.stderr
    manifest = json.loads((android_bundle / "manifest.json").read_text())
    assert sorted(p.name for p in dest.iterdir()) == sorted([*manifest["files"], "manifest.json"])

    broken = tmp_path / "broken"
    shutil.copytree(android_bundle, broken)
    with open(broken / "tokenizer.json", "a") as f:
        f.write(" ")
    r = _run(["bash", str(CI / "put_bundle.sh"), str(broken), str(dest)])
    assert r.returncode != 0 and "differs from its manifest entry" in r.stderr
    assert (dest / "tokenizer.json").read_bytes() == (android_bundle / "tokenizer.json").read_bytes()
    assert not list(dest.parent.glob(".bundle.*")), "a failed copy left a temporary folder behind"
