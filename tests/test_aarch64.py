"""The runtime install on aarch64: a bundle exported here runs as an Arm Linux process.

samples/raspberry-pi/emulate.sh builds (once, cached outside the repository) a Debian arm64
rootfs with CPython 3.11, the pinned aarch64 wheels of `pip install edgemfm` and this checkout's
edgemfm, and runs it under qemu-user as a Cortex-A76 (a Raspberry Pi 5). The bundle is exported
on the host for `pi5`; the emulated process must load every component and produce the host's
greedy tokens, through `edgemfm run` and through `edgemfm.load(...).generate(...)`. It proves the
wheels, our pure-Python code and onnxruntime's Arm CPU kernels on aarch64, not the speed of a
real core nor the GPU providers of a Jetson (their absence must fall back to the CPU). With the
`sign` extra's pinned aarch64 wheels added (`emulate.sh --extra sign`), a bundle signed on the
host loads there with its trusted key, and a tampered signature is refused in one line.

Skipped only when the arm64 inputs cannot be fetched (emulate.sh exits 75: no network, apt or
the package index failing). On 2 idle cores: about 50 s with the cache (20 s of it exporting
the bundle on the host); building the cache from nothing adds about 40 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
EMULATE = REPO / "samples" / "raspberry-pi" / "emulate.sh"
LOCK = REPO / "samples" / "raspberry-pi" / "requirements-aarch64.txt"
SIGN_LOCK = REPO / "samples" / "raspberry-pi" / "requirements-aarch64-sign.txt"  # the [sign] extra's
EX_UNFETCHABLE = 75  # emulate.sh: an arm64 input could not be fetched
PROMPT = "What is in the picture?"
MAX_NEW_TOKENS = 24
# onnxruntime.py logs this when a profile's preferred providers are missing (here: all GPU ones).
JETSON_FALLBACK = (
    "edgemfm: TensorrtExecutionProvider, CUDAExecutionProvider not available here; using CPUExecutionProvider"
)
PI5_FALLBACK = "edgemfm: XnnpackExecutionProvider not available here; using CPUExecutionProvider"

# Runs on the host and, unchanged, in the emulated process: load the bundle with each profile,
# answer with and without the image, and print JSON.
PROBE = """
import json, logging, platform, sys
import edgemfm

bundle, image, prompt, max_new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
records = []
handler = logging.Handler()
handler.emit = lambda r: records.append(r.getMessage())
logging.getLogger("edgemfm").addHandler(handler)

result = {"machine": platform.machine(), "profiles": {}}
for device in ("pi5", "jetson"):
    records.clear()
    pipe = edgemfm.load(bundle, device=device)
    result["profiles"][device] = {
        "components": sorted(pipe.sessions),
        "providers": sorted({s.provider for s in pipe.sessions.values()}),
        "log": list(records),
        "image_ids": list(pipe.generate_tokens(prompt, images=[image], max_new_tokens=max_new)),
    }
result["image_text"] = "".join(pipe.generate(prompt, images=[image], max_new_tokens=max_new))
result["text_ids"] = list(pipe.generate_tokens("Tell me a story.", max_new_tokens=max_new))
print(json.dumps(result))
"""


def lock_pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("==")
            pins[name.lower().replace("_", "-")] = rest.split()[0]
    return pins


@pytest.mark.parametrize(("lock", "extra"), [(LOCK, None), (SIGN_LOCK, "sign")])
def test_lock_pins_what_pyproject_requires(lock, extra):
    """Each aarch64 lock file pins, for Python 3.11 on Linux, a version of each dependency it
    stands for: the runtime's, or an extra's (kept apart so the runtime install stays small)."""
    pins = lock_pins(lock)
    if extra:
        assert not pins.keys() & lock_pins(LOCK).keys(), f"{lock.name} repeats a pin of {LOCK.name}"
    env = {
        "python_version": "3.11",
        "python_full_version": "3.11.2",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "aarch64",
    }
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["optional-dependencies"][extra] if extra else project["dependencies"]
    for dep in map(Requirement, deps):
        if dep.marker and not dep.marker.evaluate(env):
            continue
        name = dep.name.lower().replace("_", "-")
        assert name in pins, f"{lock.name} lacks {dep.name}, which pyproject.toml requires"
        assert dep.specifier.contains(pins[name]), f"{lock.name} pins {name}=={pins[name]}, pyproject wants {dep}"


def emulate(*args: str) -> Path:
    env = {**os.environ, "EDGEMFM_HOST_PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(EMULATE), "--repo", str(REPO), *args], capture_output=True, text=True, env=env)
    if proc.returncode == EX_UNFETCHABLE:
        pytest.skip(f"aarch64 inputs cannot be fetched: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, f"emulate.sh failed ({proc.returncode}):\n{proc.stderr}"
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def aarch64_python() -> Path:
    """The launcher of aarch64 Python with this checkout's runtime install (built or reused)."""
    return emulate()


@pytest.fixture(scope="module")
def aarch64_sign_python() -> Path:
    """The same, plus the `sign` extra's pinned aarch64 wheels (cryptography, cffi, pycparser)."""
    return emulate("--extra", "sign")


@pytest.fixture(scope="module")
def pi5_bundle(tmp_path_factory, placeholder_model) -> Path:
    out = tmp_path_factory.mktemp("aarch64") / "default-pi5"
    cli(
        sys.executable,
        "export",
        "--model",
        str(placeholder_model),
        "--device",
        "pi5",
        "--out",
        str(out),
        cwd=out.parent,
    )
    return out


@pytest.fixture(scope="module")
def photo() -> Path:
    return REPO / "samples" / "images" / "shapes.png"


def cli(python: str | Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    # cwd away from the checkout: `-m` puts it first on sys.path, and the guest must import the
    # installed wheel, never the source folders.
    proc = subprocess.run([str(python), "-m", "edgemfm.cli", *args], capture_output=True, cwd=cwd)
    assert proc.returncode == 0, f"edgemfm {args[0]} failed ({proc.returncode}):\n{proc.stderr.decode()}"
    return proc


def probe(python: str | Path, bundle: Path, photo: Path, tmp: Path) -> dict:
    script = tmp / "probe.py"
    script.write_text(PROBE)
    proc = subprocess.run(
        [str(python), str(script), str(bundle), str(photo), PROMPT, str(MAX_NEW_TOKENS)],
        capture_output=True,
        text=True,
        cwd=tmp,
    )
    assert proc.returncode == 0, f"the probe failed on {python} ({proc.returncode}):\n{proc.stderr}"
    return json.loads(proc.stdout)


def run_args(bundle: Path, photo: Path) -> list[str]:
    return ["run", str(bundle), "--prompt", PROMPT, "--image", str(photo), "--max-new-tokens", str(MAX_NEW_TOKENS)]


def test_cli_on_aarch64_prints_the_hosts_answer_falling_back_from_jetson_gpus(
    aarch64_python, pi5_bundle, photo, tmp_path
):
    # One emulated run for both claims (each costs seconds): `edgemfm run` streams the host's
    # answer, and the Jetson profile's TensorRT and CUDA, missing here, give one line, no crash.
    args = [*run_args(pi5_bundle, photo), "--device", "jetson"]
    arm = cli(aarch64_python, *args, cwd=tmp_path)
    host = cli(sys.executable, *args, cwd=tmp_path)
    assert arm.stdout == host.stdout and len(arm.stdout) > 1
    assert arm.stderr.decode().strip().splitlines() == [JETSON_FALLBACK, "edgemfm: running on CPUExecutionProvider"]


def test_python_api_on_aarch64_matches_host(aarch64_python, pi5_bundle, photo, tmp_path):
    host = probe(sys.executable, pi5_bundle, photo, tmp_path)
    arm = probe(aarch64_python, pi5_bundle, photo, tmp_path)
    assert arm["machine"] == "aarch64" and host["machine"] != "aarch64"
    components = sorted(json.loads((pi5_bundle / "manifest.json").read_text())["components"])
    for device in ("pi5", "jetson"):
        got = arm["profiles"][device]
        assert got["components"] == components and got["providers"] == ["CPUExecutionProvider"]
        assert got["image_ids"] == host["profiles"][device]["image_ids"] and got["image_ids"]
    assert arm["profiles"]["jetson"]["log"] == [JETSON_FALLBACK]
    # The Pi 5 profile prefers XNNPACK, which the PyPI aarch64 wheel lacks (as on a real Pi 5).
    assert arm["profiles"]["pi5"]["log"] == [PI5_FALLBACK]
    assert arm["text_ids"] == host["text_ids"] != arm["profiles"]["pi5"]["image_ids"]
    assert arm["image_text"] == host["image_text"]


def test_camera_sample_answers_about_a_file(aarch64_python, pi5_bundle, photo, tmp_path):
    # The board sample, without a camera library: the picture comes from --image.
    sample = REPO / "samples" / "raspberry-pi" / "camera_question.py"
    args = [str(sample), str(pi5_bundle), PROMPT, "--image", str(photo), "--max-new-tokens", str(MAX_NEW_TOKENS)]
    arm = subprocess.run([str(aarch64_python), *args], capture_output=True, cwd=tmp_path)
    assert arm.returncode == 0, arm.stderr.decode()
    assert arm.stdout == cli(sys.executable, *run_args(pi5_bundle, photo), cwd=tmp_path).stdout


def refused(python: str | Path, *args: str, cwd: Path) -> str:
    """Run `edgemfm ARGS` expecting a user error: exit 2 and one line; returns that line."""
    proc = subprocess.run([str(python), "-m", "edgemfm.cli", *args], capture_output=True, text=True, cwd=cwd)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and not proc.stdout, (proc.returncode, proc.stderr)
    return lines[0]


def test_a_bundle_signed_on_the_host_loads_on_aarch64_and_a_tampered_one_is_refused(
    aarch64_python, aarch64_sign_python, pi5_bundle, photo, tmp_path
):
    bundle = tmp_path / "signed-pi5"
    shutil.copytree(pi5_bundle, bundle)
    cli(sys.executable, "keygen", str(tmp_path / "ci-key"), cwd=tmp_path)
    cli(sys.executable, "sign", str(bundle), "--key", str(tmp_path / "ci-key"), cwd=tmp_path)
    args = [*run_args(bundle, photo), "--trusted-key", str(tmp_path / "ci-key.pub")]
    arm = cli(aarch64_sign_python, *args, cwd=tmp_path)
    assert arm.stdout == cli(sys.executable, *run_args(pi5_bundle, photo), cwd=tmp_path).stdout and arm.stdout

    # The plain runtime install has no cryptography: a required signature names the extra to install.
    line = refused(aarch64_python, *args, cwd=tmp_path)
    assert line.endswith("signing and verifying bundles needs: pip install 'edgemfm[sign]'"), line

    record = json.loads((bundle / "manifest.sig").read_text())
    first = record["signature"][0]
    record["signature"] = ("1" if first == "0" else "0") + record["signature"][1:]
    (bundle / "manifest.sig").write_text(json.dumps(record))
    line = refused(aarch64_sign_python, *args, cwd=tmp_path)
    assert "does not verify with any of the 1 trusted key(s)" in line, line
