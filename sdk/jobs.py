"""Independent jobs on a local process pool, or on a Ray cluster when an address is given.

The one fan-out of edgemfm: the tuner's candidate scoring, a fleet export and a fleet tune each hand
it a function and its jobs. It schedules nothing itself: a `concurrent.futures` process pool
(`spawn`) by default, the Ray cluster at `ray_address` (the `ray` extra) otherwise. `fn` and the
jobs must be picklable (a module-level function, plain records), and any path a job names must be
storage the workers see. Results come back in the order of the jobs.

Example:
    >>> import math
    >>> run_jobs(math.sqrt, [4.0, 9.0], workers=2)   # doctest: +SKIP
    [2.0, 3.0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from edgemfm.errors import EdgemfmError
from edgemfm.progress import Progress, counter


def _call(fn: Callable[[Any], Any], job: Any) -> Any:
    return fn(job)


def run_jobs(
    fn: Callable[[Any], Any],
    jobs: Sequence[Any],
    workers: int = 1,
    ray_address: str | None = None,
    progress: Progress | None = None,
    description: str = "running jobs",
) -> list[Any]:
    """`fn` over `jobs` on a process pool of `workers`, or on the Ray cluster at `ray_address`.

    `progress` hears `description` advance as each result comes back.

    Example:
        >>> run_jobs(math.sqrt, [4.0, 9.0, 16.0], ray_address="auto")   # doctest: +SKIP
        [2.0, 3.0, 4.0]
    """
    advance = counter(progress, description, len(jobs))
    if ray_address is not None:
        try:
            import ray
        except ImportError:
            raise EdgemfmError("--ray needs Ray: pip install 'edgemfm[ray]'") from None
        ray.init(address=ray_address, ignore_reinit_error=True, log_to_driver=False)
        remote = ray.remote(_call)  # any callable Ray workers can import, builtins included
        refs = [remote.remote(fn, j) for j in jobs]
        results = []
        for ref in refs:
            results.append(ray.get(ref))
            advance()
        return results
    # spawn: the parent holds torch and ONNX Runtime state a fork would copy half-initialised
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(fn, j) for j in jobs]
        results = []
        for f in futures:
            results.append(f.result())
            advance()
        return results
