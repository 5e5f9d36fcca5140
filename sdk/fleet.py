"""Export one model for many devices at once: one bundle per device, on a process pool or a Ray cluster.

`OUT/<profile name>/` holds each device's bundle (`fleet/raspberry-pi-5-8gb`, `fleet/jetson-orin-nano-8gb`).
Each device is an independent `export` of the same `ExportConfig` (the checkpoint is loaded and
split again in each job), run by the tuner's `run_jobs`: a local `spawn` process pool by default,
the Ray cluster at `ray_address` when given (the `ray` extra; OUT and a local model folder must be
storage its workers see, a Hub id is fetched into each worker's own Hugging Face cache). A device
that fails is reported in one line and the others' bundles are kept.

Example:
    >>> config = ExportConfig(model="models/llava-tiny", out="fleet")
    >>> report = export_fleet(config, ["pi5", "jetson", "android"])  # doctest: +SKIP
    >>> [(d.device, d.bundle) for d in report.devices]                 # doctest: +SKIP
    [('raspberry-pi-5-8gb', 'fleet/raspberry-pi-5-8gb'), ...]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from edgemfm import bundle
from edgemfm.configs import ExportConfig
from edgemfm.errors import EdgemfmError, InputError
from edgemfm.profiles import load_profile


@dataclass(frozen=True)
class DeviceExport:
    """One device's outcome: its bundle, or the one-line reason it has none."""

    device: str  # the profile's name
    bundle: str | None  # the bundle directory written, None when the export failed
    error: str | None = None  # one line: the typed error's message, or the exception's type and message


@dataclass(frozen=True)
class FleetReport:
    out: str  # the folder holding one bundle per device
    devices: tuple[DeviceExport, ...]  # in the order the devices were given

    @property
    def failed(self) -> tuple[DeviceExport, ...]:
        return tuple(d for d in self.devices if d.error is not None)


def parse_devices(devices: str | Sequence[str]) -> list[str]:
    """The profile names of "pi5,jetson,android" (or a list), in order, each once; unknown names refused.

    Example:
        >>> parse_devices("pi5,rpi,host")
        ['raspberry-pi-5-8gb', 'host-x86-64-avx2']
    """
    names = [d.strip() for d in devices.split(",")] if isinstance(devices, str) else list(devices)
    if not names or "" in names:
        raise InputError(f"device list {devices!r} has an empty name; expected e.g. pi5,jetson,android")
    return list(dict.fromkeys(load_profile(n).name for n in names))  # an alias and its name are one device


def _export_one(config: ExportConfig) -> DeviceExport:
    """One device's export in a worker; every failure becomes a line of the report, never lost bundles."""
    from edgemfm.exporting import export

    try:
        return DeviceExport(config.device, str(export(config)))
    except EdgemfmError as e:
        return DeviceExport(config.device, None, str(e))
    except Exception as e:  # our own bug on one device must not cost the others their bundles
        return DeviceExport(config.device, None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def export_fleet(
    config: ExportConfig,
    devices: str | Sequence[str],
    workers: int | None = None,
    ray_address: str | None = None,
) -> FleetReport:
    """`config` exported for every device in `devices`, into `config.out/<profile name>/`.

    `workers`: processes of the local pool (default: one per device, at most one per CPU);
    `ray_address`: run the exports on this Ray cluster instead ("auto", or host:port).

    Example:
        >>> export_fleet(ExportConfig(model="org/name", precision="int8", out="fleet"), "pi5,jetson").failed  # doctest: +SKIP
        ()
    """
    from edgemfm.tune.quality import run_jobs

    names = parse_devices(devices)
    if config.out is None:
        raise InputError("--out is required with several devices: the folder that will hold one bundle per device")
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers} is not allowed; allowed: 1 or more")
    if config.model is not None:  # a bad --model fails once, and a Hub id is fetched once, here
        from edgemfm.model_source import resolve_model

        resolve_model(config.model, config.revision)
    out = bundle.check_output(config.out, config.force)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [replace(config, device=name, out=str(out / name)) for name in names]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    return FleetReport(str(out), tuple(run_jobs(_export_one, jobs, workers, ray_address)))
