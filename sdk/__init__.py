"""edgemfm: deploy multimodal foundation models to edge devices.

`import edgemfm` is light: it loads neither torch nor transformers nor onnx. Exporting needs
`pip install 'edgemfm[export]'`; running a bundle needs only the runtime install.

Layers, bottom to top, each importing only those below it (tests/test_layers.py keeps the table):
the leaf records (errors, records, recipe, profiles, manifest, bundle, toolchain, and cost: the
roofline over a manifest and a profile); edgemfm.runtimes, what a device runs (nothing of the host
side, no torch at import); edgemfm.exporters and edgemfm.quantizers, the host toolchain; the verbs
(exporting, finetune, tune, bench, measure, cli), which the names here load lazily.

Example:
    >>> import edgemfm
    >>> path = edgemfm.export(edgemfm.ExportConfig(device="jetson", out="bundles/default-jetson"))  # doctest: +SKIP
    >>> pipe = edgemfm.load(path)                                                   # doctest: +SKIP
    >>> print("".join(pipe.generate("What is this?", images=["cat.png"])))         # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgemfm.errors import EdgemfmError
from edgemfm.profiles import DeviceProfile, list_profiles, load_profile

__version__ = "0.1.0"
__all__ = [
    "DeviceProfile",
    "EdgemfmError",
    "ExportConfig",
    "FinetuneConfig",
    "QuantizeConfig",
    "export",
    "list_profiles",
    "load",
    "load_cascade",
    "load_profile",
]
_CONFIGS = ("ExportConfig", "FinetuneConfig", "QuantizeConfig")  # the verbs' configs, from edgemfm.configs

if TYPE_CHECKING:
    from edgemfm.configs import ExportConfig, FinetuneConfig, QuantizeConfig
    from edgemfm.exporting import export
    from edgemfm.runtimes.cascade import load as load_cascade
    from edgemfm.runtimes.pipeline import load


def __getattr__(name: str) -> Any:
    # export, load and load_cascade pull in their stacks only when used; the configs module only when asked for
    if name in _CONFIGS:
        from edgemfm import configs

        return getattr(configs, name)
    if name == "export":
        from edgemfm.exporting import export

        return export
    if name == "load":
        from edgemfm.runtimes.pipeline import load

        return load
    if name == "load_cascade":
        from edgemfm.runtimes.cascade import load as load_cascade

        return load_cascade
    raise AttributeError(f"module 'edgemfm' has no attribute {name!r}")
