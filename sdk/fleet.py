"""Export or tune one model for many devices at once: one job per device, on a process pool or a Ray cluster.

`export_fleet`: `OUT/<profile name>/` holds each device's bundle (`fleet/raspberry-pi-5-8gb`,
`fleet/jetson-orin-nano-8gb`); each device is an independent `export` of the same `ExportConfig`
(the checkpoint is loaded and split again in each job). `tune_fleet`: each device is an
independent `tune` from one float bundle (exported once, here, when none is given), with its own
result, and with `apply` its chosen point's bundle in `APPLY/<profile name>/`.

The jobs go through `edgemfm.jobs.run_jobs`: a local `spawn` process pool by default, the Ray
cluster at `ray_address` when given (the `ray` extra; OUT, the scratch folder and a local model
folder must be storage its workers see, a Hub id is fetched into each worker's own Hugging Face
cache). A device that fails is reported in one line and the others' results are kept.

Example:
    >>> config = ExportConfig(model="models/llava-tiny", out="fleet")
    >>> report = export_fleet(config, ["pi5", "jetson", "android"])  # doctest: +SKIP
    >>> [(d.device, d.bundle) for d in report.devices]                 # doctest: +SKIP
    [('raspberry-pi-5-8gb', 'fleet/raspberry-pi-5-8gb'), ...]
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgemfm import bundle
from edgemfm.configs import ExportConfig
from edgemfm.errors import EdgemfmError, InputError
from edgemfm.jobs import run_jobs
from edgemfm.profiles import load_profile
from edgemfm.progress import Progress

if TYPE_CHECKING:
    from edgemfm.tune import Result


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


@dataclass(frozen=True)
class DeviceTune:
    """One device's tuning: its result (and chosen bundle with `apply`), or the one-line reason it has none."""

    device: str  # the profile's name
    result: Result | None  # every point, the frontier and the chosen one; None when tuning failed
    bundle: str | None = None  # the chosen point's bundle with `apply`, else None
    error: str | None = None  # one line, as DeviceExport.error


@dataclass(frozen=True)
class FleetTune:
    devices: tuple[DeviceTune, ...]  # in the order the devices were given

    @property
    def failed(self) -> tuple[DeviceTune, ...]:
        return tuple(d for d in self.devices if d.error is not None)


@dataclass(frozen=True)
class _TuneJob:
    device: str  # the profile's name
    options: dict[str, Any] = field(default_factory=dict)  # tune's keyword arguments for this device


def _failure(e: Exception) -> str:
    """The one line a failed device gets: a typed error's message, else the exception's type and first line."""
    if isinstance(e, EdgemfmError):
        return str(e)
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _export_one(config: ExportConfig) -> DeviceExport:
    """One device's export in a worker; every failure becomes a line of the report, never lost bundles."""
    from edgemfm.exporting import export

    try:
        return DeviceExport(config.device, str(export(config)))
    except Exception as e:  # our own bug on one device must not cost the others their bundles
        return DeviceExport(config.device, None, _failure(e))


def _tune_one(job: _TuneJob) -> DeviceTune:
    """One device's tuning in a worker; a failure (a budget it cannot meet, a bug) is its line of the report."""
    from edgemfm.tune import tune

    try:
        result = tune(job.device, **job.options)
    except Exception as e:  # one device's failure must not cost the others their results
        return DeviceTune(job.device, None, None, _failure(e))
    apply = job.options.get("apply")
    return DeviceTune(job.device, result, None if apply is None else str(apply))


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
    names = parse_devices(devices)
    if config.out is None:
        raise InputError("--out is required with several devices: the folder that will hold one bundle per device")
    _check_workers(workers)
    _resolve_once(config.model, config.revision)
    out = _output_folder(config.out, config.force)
    jobs = [replace(config, device=name, out=str(out / name)) for name in names]
    return FleetReport(str(out), tuple(run_jobs(_export_one, jobs, _workers(workers, jobs), ray_address)))


def tune_fleet(
    devices: str | Sequence[str],
    latency_budget_ms: float,
    memory_budget_mb: float | None = None,
    *,
    model: str | Path | None = None,
    bundle: str | Path | None = None,
    revision: str | None = None,
    apply: str | Path | None = None,
    force: bool = False,
    workers: int | None = None,
    ray_address: str | None = None,
    scratch: str | Path | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> FleetTune:
    """`edgemfm.tune.tune` for every device in `devices`: one result per device, in their order.

    The budgets apply to each device (the memory budget defaults to each profile's own); `apply`
    is a folder that gets each device's chosen bundle as `APPLY/<profile name>/`. Without `bundle`
    the float bundle is exported once, under `scratch`, and every device starts from it. `workers`:
    devices tuned at once on the local pool (default: one per device, at most one per CPU), each
    scoring its candidates in one process; `ray_address`: tune the devices, and score their
    candidates, on this Ray cluster. `options` are tune's other keyword arguments (data,
    questions, space, prompt_tokens, answer_tokens), the same for every device.

    Example:
        >>> report = tune_fleet("pi5,jetson", 900, model="org/name", apply="tuned")  # doctest: +SKIP
        >>> [(d.device, d.result.chosen.latency_ms) for d in report.devices]          # doctest: +SKIP
        [('raspberry-pi-5-8gb', 812.4), ('jetson-orin-nano-8gb', 97.1)]
    """
    names = parse_devices(devices)
    _check_workers(workers)
    _resolve_once(model, revision)
    if apply is not None:
        apply = _output_folder(apply, force, (model, bundle, options.get("data")))
    with tempfile.TemporaryDirectory(prefix="edgemfm-tune-fleet-", dir=scratch) as tmp:
        if bundle is None:  # one float bundle for every device, not one export each
            from edgemfm.toolchain import quiet
            from edgemfm.tune.host import float_source

            with quiet():
                bundle, _ = float_source(model, revision, None, False, Path(tmp), progress)
        common = dict(
            options,
            latency_budget_ms=latency_budget_ms,
            memory_budget_mb=memory_budget_mb,
            model=model,
            bundle=bundle,
            revision=revision,
            ray_address=ray_address,  # with Ray, each device's candidates are scored on the cluster too
            scratch=scratch,
            force=force,
        )
        jobs = [_TuneJob(name, dict(common, apply=None if apply is None else str(apply / name))) for name in names]
        done = run_jobs(
            _tune_one, jobs, _workers(workers, jobs), ray_address, progress, f"tuning for {len(jobs)} devices"
        )
    return FleetTune(tuple(done))


def _output_folder(out: str | Path, force: bool, inputs: Sequence[str | Path | None] = ()) -> Path:
    """The folder of one bundle per device, checked like an export's output (before any job) and created."""
    out = bundle.check_output(out, force, inputs)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers} is not allowed; allowed: 1 or more")


def _workers(workers: int | None, jobs: Sequence[Any]) -> int:
    return workers or min(len(jobs), os.cpu_count() or 1)


def _resolve_once(model: str | Path | None, revision: str | None) -> None:
    """A bad --model fails once, and a Hub id is fetched once, here, before any job starts."""
    if model is not None:
        from edgemfm.model_source import resolve_model

        resolve_model(model, revision)
