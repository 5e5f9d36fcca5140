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
import re
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import demo_weights

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
def android_app(tmp_path_factory, placeholder_model) -> tuple[Path, Path]:
    """The placeholder model exported for the android profile into a copy of the sample's project, as
    `edgemfm export --device android --out BUNDLE --app PROJECT` does: (BUNDLE, PROJECT). One export serves
    the APK, the Java parity tests and the --app test (each export of it was 10-20 s of the default suite)."""
    from edgemfm.cli import main

    base = tmp_path_factory.mktemp("android")
    app = base / "app-project"
    shutil.copytree(
        ANDROID / "app" / "src" / "main", app / "app" / "src" / "main", ignore=shutil.ignore_patterns("assets")
    )
    argv = ["export", "--model", str(placeholder_model), "--device", "android", "--out", str(base / "bundle")]
    assert main([*argv, "--app", str(app)]) == 0
    return base / "bundle", app


@pytest.fixture(scope="module")
def android_bundle(android_app) -> Path:
    """The placeholder model exported for the android profile (`edgemfm export --device android`)."""
    return android_app[0]


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
    target = int(r.stdout.split("targetSdkVersion:'", 1)[1].split("'")[0])
    assert target >= 34  # Android 15's store and install rules for new apps
    assert "uses-permission: name='android.permission.RECORD_AUDIO'" in r.stdout


def _elf_load_alignments(data: bytes) -> list[tuple[int, int, int]]:
    """(p_offset, p_vaddr, p_align) of each LOAD segment of a 64-bit little-endian ELF file."""
    assert data[:6] == b"\x7fELF\x02\x01", "not a 64-bit little-endian ELF file"
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    loads = []
    for k in range(phnum):
        p_type, _, p_offset, p_vaddr, _, _, _, p_align = struct.unpack_from("<IIQQQQQQ", data, phoff + k * phentsize)
        if p_type == 1:  # PT_LOAD
            loads.append((p_offset, p_vaddr, p_align))
    return loads


def test_native_libraries_are_stored_at_16_kib_boundaries(apk):
    """Android 15's 16 KiB pages: each library's data starts on a 16 KiB boundary in the APK, stored
    uncompressed (mapped in place: extractNativeLibs="false"), and its LOAD segments are 16 KiB-aligned."""
    with zipfile.ZipFile(apk) as z:
        libs = [i for i in z.infolist() if i.filename.startswith("lib/")]
        assert libs
        for info in libs:
            assert info.compress_type == zipfile.ZIP_STORED, info.filename
            z.fp.seek(info.header_offset)
            name_len, extra_len = struct.unpack("<HH", z.fp.read(30)[26:30])
            assert (info.header_offset + 30 + name_len + extra_len) % 16384 == 0, info.filename
            for offset, vaddr, align in _elf_load_alignments(z.read(info)):
                assert align >= 16384 and (vaddr - offset) % 16384 == 0, (info.filename, hex(offset), hex(align))
        arsc = z.getinfo("resources.arsc")  # API 30+ installs only an uncompressed, 4-byte-aligned table
        assert arsc.compress_type == zipfile.ZIP_STORED
    r = _run(["aapt", "dump", "xmltree", str(apk), "AndroidManifest.xml"])
    assert "android:extractNativeLibs(0x010104ea)=(type 0x12)0x0" in r.stdout, r.stdout


def test_gradle_project_and_ci_build_agree_on_versions():
    """Android Studio's build (app/build.gradle) and ci/build_apk.sh make the same app against the same ORT."""
    script = (CI / "build_apk.sh").read_text()
    gradle = (ANDROID / "app" / "build.gradle").read_text()

    def ci(name: str) -> str:
        return script.split(f"\n{name}=", 1)[1].split()[0]

    def groovy(name: str) -> str:
        return gradle.split(f"\n        {name} ", 1)[1].split()[0].strip("'")

    assert (ci("APP_ID"), ci("MIN_SDK"), ci("TARGET_SDK")) == (
        groovy("applicationId"),
        groovy("minSdk"),
        groovy("targetSdk"),
    )
    assert (ci("VERSION_CODE"), ci("VERSION_NAME")) == (groovy("versionCode"), groovy("versionName"))
    assert f"namespace '{ci('APP_ID')}'" in gradle
    ort = gradle.split("com.microsoft.onnxruntime:onnxruntime-android:", 1)[1].split("'")[0]
    assert f"ort-android-{ort}/" in script  # the AAR the CI build packs is the release Gradle resolves


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


DEMO_MEDIA = REPO / "samples" / "demo_model" / "media"


@pytest.fixture(scope="module")
def tiny_demo_model(tmp_path_factory) -> Path:
    """A tiny random demo checkpoint: image and audio encoders, a 2-layer decoder."""
    from test_demo import tiny_demo

    return tiny_demo(tmp_path_factory.mktemp("models") / "tiny-demo")


def _export_tiny_demo(model: Path, out: Path, precision: str = "fp32") -> Path:
    import edgemfm

    return edgemfm.export(edgemfm.ExportConfig(model=model, device="android", precision=precision, out=out))


@pytest.fixture(scope="module")
def tiny_demo_android(tiny_demo_model, tmp_path_factory) -> Path:
    """The tiny demo exported for the android profile, float32."""
    return _export_tiny_demo(tiny_demo_model, tmp_path_factory.mktemp("android") / "tiny-demo")


@pytest.fixture(scope="module")
def tiny_demo_int8(tiny_demo_model, tmp_path_factory) -> Path:
    """The tiny demo exported int8 for android: static QDQ, calibrated on the built-in set (speech included)."""
    return _export_tiny_demo(tiny_demo_model, tmp_path_factory.mktemp("android") / "tiny-demo-int8", "int8")


@pytest.fixture(scope="module")
def tone_16k(tmp_path_factory) -> Path:
    """Half a second of a 440 Hz tone at the model's 16 kHz, 16-bit PCM: no resampling on either side."""
    import wave

    path = tmp_path_factory.mktemp("audio") / "tone-16k.wav"
    t = np.arange(8000) / 16000
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes())
    return path


@pytest.mark.parametrize("clip", ["word.wav", "tone"])
def test_java_log_mel_matches_python(host_run, tiny_demo_android, tone_16k, clip, tmp_path):
    """AudioPreprocessor (WAV read, resampling 22.05 -> 16 kHz, STFT, mel, log) gives runtimes/audio.py's features."""
    from edgemfm.bundle import read_manifest
    from edgemfm.runtimes.audio import preprocess_audio

    wav = DEMO_MEDIA / clip if clip.endswith(".wav") else tone_16k
    features = tmp_path / "features.f32"
    _java(
        host_run,
        *("--bundle", str(tiny_demo_android), "--audio", str(wav), "--max-new-tokens", "1"),
        *("--prompt", "What word?", "--features", str(features)),
    )
    want, _ = preprocess_audio(wav, read_manifest(tiny_demo_android).preprocess.audio)
    got = np.fromfile(features, dtype="<f4").reshape(want.shape)
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("with_image", [False, True])
def test_java_decode_loop_hears_like_edgemfm_run(host_run, tiny_demo_android, picture, with_image):
    """The audio encoder's rows (and the image's, when both are given) are spliced as the Python runtime does."""
    from edgemfm.runtimes.pipeline import load

    wav = DEMO_MEDIA / "word.wav"
    images = [str(picture)] if with_image else []
    java = _java(
        host_run,
        *("--bundle", str(tiny_demo_android), "--prompt", "What word is spoken?", "--max-new-tokens", "6"),
        *("--audio", str(wav)),
        *(["--image", str(picture)] if with_image else []),
    )
    pipe = load(tiny_demo_android)
    want = list(pipe.generate_tokens("What word is spoken?", images=images, audio=[wav], max_new_tokens=6))
    assert java["tokens"] == want


@pytest.fixture(scope="module")
def demo_int8_android(tmp_path_factory) -> Path:
    """The built-in demo model exported for android at int8 (static QDQ, calibrated on the built-in
    drawings, speech and prompts; minutes: -m slow only), or the bundle at
    $EDGEMFM_DEMO_ANDROID_BUNDLE when set, to reuse one that
    `edgemfm export --device android --precision int8` wrote."""
    if given := os.environ.get("EDGEMFM_DEMO_ANDROID_BUNDLE"):
        return Path(given)
    return _export_demo(tmp_path_factory.mktemp("bundles") / "demo-android-int8", "int8")


def _export_demo(out: Path, precision: str) -> Path:
    import edgemfm

    demo_weights()
    return edgemfm.export(edgemfm.ExportConfig(device="android", precision=precision, out=out))


@pytest.mark.slow
@pytest.mark.parametrize(
    "media, prompt, want",
    [q for q in json.loads((DEMO_MEDIA / "questions.json").read_text()) if q[0] != "digit.png"],
)
def test_java_decode_loop_answers_the_demo_samples_from_the_int8_bundle(
    host_run, demo_int8_android, media, prompt, want, capsys
):
    """The app's loop on the JVM answers the drawing ("triangle", "blue") and the clip ("seven") from
    the int8 bundle, token for token as `edgemfm run` on that bundle."""
    from edgemfm.cli import main
    from edgemfm.runtimes.pipeline import load

    kind = "image" if media.endswith(".png") else "audio"
    path = str(DEMO_MEDIA / media)
    java = _java(
        host_run,
        *("--bundle", str(demo_int8_android), "--prompt", prompt, "--max-new-tokens", "8", f"--{kind}", path),
    )
    pipe = load(demo_int8_android)
    assert java["tokens"] == list(
        pipe.generate_tokens(prompt, max_new_tokens=8, **{f"{kind}s" if kind == "image" else kind: [path]})
    )
    assert java["text"] == want
    assert main(["run", str(demo_int8_android), "--prompt", prompt, "--max-new-tokens", "8", f"--{kind}", path]) == 0
    assert "".join(java["pieces"]) == capsys.readouterr().out.removesuffix("\n")


@pytest.fixture(scope="module", params=["int4", "auto"])
def demo_android_low_bits(request, tmp_path_factory) -> Path:
    """The demo model exported for android at int4 or auto (minutes each: -m slow only), or the
    bundle at $EDGEMFM_DEMO_ANDROID_INT4_BUNDLE / $EDGEMFM_DEMO_ANDROID_AUTO_BUNDLE when set."""
    if given := os.environ.get(f"EDGEMFM_DEMO_ANDROID_{request.param.upper()}_BUNDLE"):
        return Path(given)
    return _export_demo(tmp_path_factory.mktemp("bundles") / f"demo-android-{request.param}", request.param)


@pytest.mark.slow
@pytest.mark.parametrize(
    "media, prompt", [(q[0], q[1]) for q in json.loads((DEMO_MEDIA / "questions.json").read_text())]
)
def test_java_decode_loop_runs_the_int4_and_auto_demo_bundles(host_run, demo_android_low_bits, media, prompt):
    """The demo's int4 (MatMulNBits) and auto bundles run in the app's loop, token for token as the Python runtime."""
    from edgemfm.runtimes.pipeline import load

    kind = "image" if media.endswith(".png") else "audio"
    path = str(DEMO_MEDIA / media)
    java = _java(
        host_run,
        *("--bundle", str(demo_android_low_bits), "--prompt", prompt, "--max-new-tokens", "8", f"--{kind}", path),
    )
    pipe = load(demo_android_low_bits)
    want = list(pipe.generate_tokens(prompt, max_new_tokens=8, **{"images" if kind == "image" else kind: [path]}))
    assert java["tokens"] == want and want


@pytest.fixture(
    scope="module",
    # auto mixes the int4 and int8 kernels checked here already: another export of minutes under load, -m slow
    params=["int8", "int4", pytest.param("auto", marks=pytest.mark.slow)],
)
def tiny_demo_quantized(request, tiny_demo_model, tmp_path_factory) -> Path:
    """The tiny demo exported for android at int8 (QDQ), int4 (MatMulNBits) or auto."""
    if request.param == "int8":
        return request.getfixturevalue("tiny_demo_int8")
    return _export_tiny_demo(tiny_demo_model, tmp_path_factory.mktemp("android") / request.param, request.param)


def test_android_int8_calibrates_every_encoder_on_the_built_in_set(tiny_demo_int8):
    """Static int8 (QDQ) fixes activation ranges from calibration data; the built-in set's spoken
    clips reach the audio encoder, its drawings the vision encoder, and each is measured against float."""
    from edgemfm.bundle import read_manifest

    report = read_manifest(tiny_demo_int8).report.quantization
    for name in ("vision_encoder", "audio_encoder", "text_decoder"):
        assert report[name].quantized_nodes.get("QuantizeLinear", 0) > 0, name
        assert report[name].sqnr_db is not None, name


def test_static_int8_without_clips_names_the_audio_encoder_and_the_folder_layout(tiny_demo_android, picture, tmp_path):
    """A --calibration folder without .wav clips leaves the audio encoder's static int8 uncalibrated:
    one line names the component and how to give data, before any component is quantized."""
    from edgemfm.bundle import read_manifest
    from edgemfm.configs import QuantizeConfig
    from edgemfm.errors import InputError
    from edgemfm.profiles import load_profile
    from edgemfm.quantizers.quantize import quantize

    folder = tmp_path / "calibration"
    folder.mkdir()
    shutil.copy(picture, folder / "shapes.png")
    (folder / "prompts.txt").write_text("What is in the picture?\n")
    stage = tmp_path / "stage"
    shutil.copytree(tiny_demo_android, stage)
    config = QuantizeConfig(precision="int8", calibration=str(folder))
    with pytest.raises(InputError) as refused:
        quantize(stage, read_manifest(stage), load_profile("android"), config, tmp_path / "scratch")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("audio_encoder: static_int8 needs calibration audio clips and none reached it")
    assert "--calibration DIR" in message and "audio clips .wav" in message
    for c in read_manifest(stage).components.values():  # nothing was quantized
        assert (stage / c.file).read_bytes() == (tiny_demo_android / c.file).read_bytes()


def test_java_decode_loop_runs_the_quantized_tiny_demo_bundles(host_run, tiny_demo_quantized, picture):
    """int8 (QDQ), int4 (MatMulNBits) and auto bundles run in the app's loop with the tokens of the Python runtime."""
    from edgemfm.bundle import read_manifest
    from edgemfm.runtimes.pipeline import load

    ops = {op for q in read_manifest(tiny_demo_quantized).report.quantization.values() for op in q.quantized_nodes}
    assert ops & {"QuantizeLinear", "MatMulNBits"}
    wav = DEMO_MEDIA / "word.wav"
    java = _java(
        host_run,
        *("--bundle", str(tiny_demo_quantized), "--prompt", "What is it?", "--max-new-tokens", "6"),
        *("--audio", str(wav), "--image", str(picture)),
    )
    want = list(
        load(tiny_demo_quantized).generate_tokens("What is it?", images=[picture], audio=[wav], max_new_tokens=6)
    )
    assert java["tokens"] == want and want


def test_java_kv_window_slides_as_the_python_runtime(host_run, tiny_demo_int8, tmp_path):
    """With the manifest's window at 80 entries (4 sinks, prefill chunks of 24), a 60-token prompt with
    a clip (64 rows) and 40 new tokens pass the window: the Java loop slides it as the Python runtime
    does, token for token, and the answer differs from an unbounded cache's."""
    from edgemfm.runtimes.pipeline import load

    bundle = tmp_path / "windowed"
    shutil.copytree(tiny_demo_int8, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["streaming"].update(max_seq_len=80, sink_tokens=4, prefill_chunk=24)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    wav, prompt = DEMO_MEDIA / "word.wav", "Tell me."
    java = _java(host_run, "--bundle", str(bundle), "--prompt", prompt, "--audio", str(wav), "--max-new-tokens", "40")
    pipe = load(bundle)
    want = list(pipe.generate_tokens(prompt, audio=[wav], max_new_tokens=40))
    assert len(pipe.prompt_ids(prompt, {"audio": 1})) + len(want) > 80  # the stream passes the window
    assert java["tokens"] == want
    assert java["evicted"] > 0
    assert want != list(load(tiny_demo_int8).generate_tokens(prompt, audio=[wav], max_new_tokens=40))


def test_java_memory_budget_is_the_python_runtimes(host_run, tiny_demo_int8):
    """The Java loop estimates weights, KV cache and activations as runtimes/budget.py does, from the
    manifest, and refuses a budget that cannot hold the bundle with the same one line."""
    from edgemfm.bundle import read_manifest
    from edgemfm.errors import MemoryBudgetError
    from edgemfm.runtimes import budget
    from edgemfm.runtimes.pipeline import load

    manifest = read_manifest(tiny_demo_int8)
    plan = budget.estimate(manifest, manifest.streaming, 0)
    java = _java(host_run, "--bundle", str(tiny_demo_int8), "--prompt", "Hi", "--max-new-tokens", "1")
    assert java["plan"] == {"weights": plan.weights, "kv_cache": plan.kv_cache, "activations": plan.activations}

    r = _run(["bash", str(host_run), "--bundle", str(tiny_demo_int8), "--prompt", "Hi", "--memory-budget", "10"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(MemoryBudgetError) as python:
        load(tiny_demo_int8, memory_budget=10, encoder_cache_mb=0)  # the Java loop keeps no encoder cache
    shape = (
        r"bundle '.+' needs \d+ bytes \([\d.]+ MiB: process [\d.]+, (weights [\d.]+, KV cache [\d.]+, activations [\d.]+)\) "
        r"but the memory budget allows 10485760 bytes \(10.0 MiB\); allowed: --memory-budget \d+ or more, "
        r"or a smaller streaming.max_seq_len$"
    )
    ours, theirs = re.search(shape, r.stderr.strip()), re.fullmatch(shape, str(python.value))
    assert ours and theirs and ours.group(1) == theirs.group(1)


def test_export_app_puts_a_checked_bundle_into_the_assets(placeholder_model, android_app, tmp_path, capsys):
    """`edgemfm export --device android --app PROJECT` refuses a folder that is no Android project
    before exporting anything, and otherwise leaves the verified bundle in the app's assets (the
    android_app fixture's export)."""
    from edgemfm.bundle import copy_bundle, read_manifest
    from edgemfm.cli import main
    from edgemfm.errors import BundleError

    bundle, project = android_app
    argv = ["export", "--model", str(placeholder_model), "--device", "android", "--out", str(tmp_path / "b")]
    assert main([*argv, "--app", str(tmp_path)]) == 2
    assert "is not an Android project" in capsys.readouterr().err and not (tmp_path / "b").exists()

    app = tmp_path / "app-project"
    shutil.copytree(project, app)  # the failed copy below must not reach the module's project
    assets = app / "app" / "src" / "main" / "assets" / "bundle"
    assert read_manifest(assets) == read_manifest(bundle)

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    with open(broken / "tokenizer.json", "a") as f:
        f.write(" ")
    with pytest.raises(BundleError, match="'tokenizer.json' is [0-9]+ bytes, the manifest says"):
        copy_bundle(broken, assets)
    assert read_manifest(assets) == read_manifest(bundle)  # the old bundle stays whole
    assert not [p for p in assets.parent.iterdir() if p.name != "bundle"], "a failed copy left a folder behind"
