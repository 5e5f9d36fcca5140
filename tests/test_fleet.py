"""`export --device pi5,jetson,android`: one bundle per device, on a process pool or a Ray cluster."""

from __future__ import annotations

import pytest
from tiny_models import tiny_llama

import edgemfm
from edgemfm.cli import main
from edgemfm.configs import ExportConfig
from edgemfm.errors import InputError, UnknownDeviceError
from edgemfm.fleet import export_fleet, parse_devices


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


def test_device_lists_name_each_profile_once():
    assert parse_devices("pi5,rpi,android") == ["raspberry-pi-5-8gb", "snapdragon-8-gen-3"]
    with pytest.raises(UnknownDeviceError, match="unknown device .pi9."):
        parse_devices("pi5,pi9")
    with pytest.raises(InputError, match="has an empty name"):
        parse_devices("pi5,,jetson")


def test_one_failing_device_keeps_the_others_bundles(checkpoint, tmp_path, capsys):
    out = tmp_path / "fleet"
    argv = ["export", "--model", str(checkpoint), "--device", "host,pi5", "--precision", "fp16", "--out", str(out)]
    assert main(argv) == 2  # the host has no fp16 kernels; the Pi does
    err = capsys.readouterr().err
    assert "failed host-x86-64-avx2: precision 'fp16' has no kernels on host-x86-64-avx2" in err
    assert "1 of 2 devices failed; the others' bundles are in" in err
    assert sorted(p.name for p in out.iterdir()) == ["raspberry-pi-5-8gb"]
    pipe = edgemfm.load(out / "raspberry-pi-5-8gb", device="host")
    assert (pipe.manifest.profile, pipe.manifest.report.precision) == ("raspberry-pi-5-8gb", "fp16")


@pytest.mark.slow
def test_three_devices_on_a_local_ray_cluster(checkpoint, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        address = ray.get_runtime_context().gcs_address
        config = ExportConfig(model=checkpoint, out=tmp_path / "fleet")
        report = export_fleet(config, "pi5,jetson,android", ray_address=address)
    finally:
        ray.shutdown()
    assert report.failed == ()
    names = [d.device for d in report.devices]
    assert names == ["raspberry-pi-5-8gb", "jetson-orin-nano-8gb", "snapdragon-8-gen-3"]
    for d in report.devices:
        assert edgemfm.load(d.bundle, device="host").manifest.profile == d.device
