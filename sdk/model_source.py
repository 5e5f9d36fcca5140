"""Where a `--model` comes from: a checkpoint folder, or a Hugging Face Hub id.

A folder is used as it is. Anything else that reads as a Hub id (`org/name`) is resolved through
huggingface_hub's own cache and download (`snapshot_download`), so `HF_HOME`, `HF_HUB_CACHE`,
`HF_HUB_OFFLINE` and the user's token work as they do for transformers; `revision` is a branch,
tag or commit. Only the files a PyTorch checkpoint needs are fetched (no TF/Flax/ONNX/GGUF copies).
`cached_model` answers the same question without the network, for `export --dry-run`: what the
cache already holds, or None for an id that a real run would fetch.

Example:
    >>> resolve_model("HuggingFaceTB/SmolVLM-256M-Instruct").model_id  # doctest: +SKIP
    'SmolVLM-256M-Instruct'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from edgemfm.errors import InputError, MissingExtraError

# Other frameworks' weights and exported graphs a Hub repo may carry beside the PyTorch checkpoint.
IGNORE = [
    "*.msgpack",
    "*.h5",
    "*.ot",
    "*.tflite",
    "*.onnx",
    "*.onnx_data",
    "*.gguf",
    "onnx/*",
    "openvino/*",
    "coreml/*",
]


@dataclass(frozen=True)
class ModelSource:
    """A resolved checkpoint: the folder to load, the id a bundle records, and the Hub revision it came from."""

    path: Path  # a folder with config.json
    model_id: str  # the folder's name, or the Hub repo's name (the part after the slash)
    hub_id: str | None = None  # "org/name" when it came from the Hub
    revision: str | None = None  # the commit of the snapshot, when it came from the Hub


def _checkpoint(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise InputError(f"{str(path)!r} has no config.json; expected a Hugging Face checkpoint directory")
    return path


T = TypeVar("T")


def load_checkpoint(load: Callable[[Path], T], model_dir: Path) -> T:
    """`load(model_dir)`, with weights that are missing or unreadable (truncated, corrupt) named in one line.

    Example:
        >>> model = load_checkpoint(family.load, Path("models/tiny-llama"))  # doctest: +SKIP
    """
    from safetensors import SafetensorError  # a truncated model.safetensors; transformers brings safetensors

    try:
        return load(model_dir)
    except (OSError, SafetensorError) as e:  # transformers: "no file named model.safetensors ..."
        reason = str(e).splitlines()[0][:300]
        raise InputError(
            f"cannot load the checkpoint in {str(model_dir)!r} ({reason}); allowed: a checkpoint folder with its weights"
        ) from None


def _hub_id(model: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return model.count("/") == 1  # a bare name is more likely a mistyped folder than a legacy Hub id


def model_id(model: str | Path) -> str:
    """The id a bundle records for `model`: a folder's own name, or a Hub repo's name (after the slash).

    Example:
        >>> model_id("HuggingFaceTB/SmolVLM-256M-Instruct")  # doctest: +SKIP
        'SmolVLM-256M-Instruct'
    """
    path = Path(model)
    return path.resolve().name if path.is_dir() else str(model).split("/")[-1]


def resolve_model(model: str | Path, revision: str | None = None) -> ModelSource:
    """A checkpoint folder, or a Hub id fetched into (or found in) the Hugging Face cache.

    Example:
        >>> resolve_model("models/llava-tiny").path  # doctest: +SKIP
        PosixPath('models/llava-tiny')
        >>> resolve_model("org/tiny-llava", revision="main").revision  # doctest: +SKIP
        'a1b2c3...'
    """
    path = Path(model)
    if path.is_dir():
        if revision is not None:
            raise InputError(f"--revision {revision!r} applies to a Hub id; {str(path)!r} is a local folder")
        return ModelSource(_checkpoint(path), model_id(path))
    try:
        import huggingface_hub  # noqa: F401  (installed with transformers: the export extra)
    except ImportError:
        raise MissingExtraError("huggingface_hub") from None
    if not _hub_id(str(model)):
        raise InputError(f"model directory {str(model)!r} does not exist, nor is it a Hugging Face Hub id (org/name)")
    snapshot = _download(str(model), revision)
    return ModelSource(_checkpoint(snapshot), model_id(model), str(model), snapshot.name)


def cached_model(model: str | Path, revision: str | None = None) -> ModelSource | None:
    """`resolve_model` without the network: a folder, or a Hub id's snapshot already in the cache;
    None for a Hub id a real run would fetch (offline, HF_HUB_OFFLINE=1, that is resolve_model's error).

    Example:
        >>> cached_model("org/never-fetched") is None  # doctest: +SKIP
        True
    """
    from huggingface_hub import constants

    path = Path(model)
    if path.is_dir() or constants.is_offline_mode():  # nothing would be fetched: resolve_model reads only the disk
        return resolve_model(model, revision)
    if not _hub_id(str(model)):
        raise InputError(f"model directory {str(model)!r} does not exist, nor is it a Hugging Face Hub id (org/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(str(model), revision=revision, ignore_patterns=IGNORE, local_files_only=True))
    except LocalEntryNotFoundError:
        return None
    return ModelSource(_checkpoint(snapshot), model_id(model), str(model), snapshot.name)


def fetch_plan(model: str | Path, revision: str | None = None) -> str:
    """One line saying where `model` would come from, without fetching it: what `--dry-run` tells.

    Example:
        >>> fetch_plan("HuggingFaceTB/SmolVLM-256M-Instruct")  # doctest: +SKIP
        "would fetch 'HuggingFaceTB/SmolVLM-256M-Instruct' at revision main from the Hugging Face Hub into ~/.cache/huggingface/hub"
    """
    source = cached_model(model, revision)
    if source is None:
        from huggingface_hub import constants

        at = revision or "main"
        return f"would fetch {str(model)!r} at revision {at} from the Hugging Face Hub into {constants.HF_HUB_CACHE}"
    if source.hub_id is None:
        return f"model: the folder {str(source.path)!r}"
    return f"model: {source.hub_id!r} from the Hugging Face cache, commit {source.revision} ({source.path})"


def _download(repo_id: str, revision: str | None) -> Path:
    """The snapshot folder of `repo_id` at `revision`; one-line InputErrors for what the user can fix."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    offline = " with HF_HUB_OFFLINE=1" if constants.is_offline_mode() else ""
    at = f" at revision {revision!r}" if revision else ""
    try:
        return Path(snapshot_download(repo_id, revision=revision, ignore_patterns=IGNORE))
    except RevisionNotFoundError:
        raise InputError(
            f"revision {revision!r} of {repo_id!r} does not exist on the Hub; {_cached(repo_id)}"
        ) from None
    except GatedRepoError:
        raise InputError(f"{repo_id!r} is gated on the Hub: accept its terms and `hf auth login` first") from None
    except RepositoryNotFoundError:
        raise InputError(f"model {repo_id!r} is neither a directory nor a Hub repository you can read") from None
    except LocalEntryNotFoundError:
        if revision and (cached := _cached(repo_id)) != "none cached":  # the repo is there, the revision is not
            raise InputError(f"revision {revision!r} of {repo_id!r} is not {where}{offline}; {cached}") from None
        raise InputError(f"model {repo_id!r}{at} is neither a directory nor {where}{offline}") from None


def _cached(repo_id: str) -> str:
    """The cached revisions of `repo_id`, for an error message: 'cached: main (1a2b3c4), v1 (...)'."""
    from huggingface_hub import constants

    refs = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs"
    found = sorted(p for p in refs.rglob("*") if p.is_file()) if refs.is_dir() else []
    if not found:
        return "none cached"
    return "cached: " + ", ".join(f"{p.relative_to(refs)} ({p.read_text().strip()[:7]})" for p in found)
