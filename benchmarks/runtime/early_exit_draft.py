"""Make a self-speculative draft: the first N decoder layers of a checkpoint, same tower, embedding and head.

The draft shares the tokenizer and every weight it keeps with the target, so it is free to
store and agrees with the target wherever the later layers change little (LayerSkip, arXiv
2404.16710, drafts the same way). Needs the export extra.

    python -m benchmarks.runtime.early_exit_draft [--model CHECKPOINT] --layers 2 --device host --out bundles/draft
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import edgemfm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="LLaVA checkpoint directory (default: the built-in default model)")
    p.add_argument("--layers", type=int, required=True, help="decoder layers the draft keeps")
    p.add_argument("--device", default="host")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    import torch
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from edgemfm.exporters import placeholder

    with tempfile.TemporaryDirectory() as scratch:
        src = Path(args.model) if args.model else placeholder.build(Path(scratch) / "target")
        model = LlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32)
        lm = model.model.language_model
        lm.layers = lm.layers[: args.layers]
        model.config.text_config.num_hidden_layers = args.layers
        model.config.text_config.layer_types = (
            model.config.text_config.layer_types[: args.layers]
            if getattr(model.config.text_config, "layer_types", None)
            else None
        )
        draft = Path(scratch) / "draft"
        model.save_pretrained(draft)
        AutoTokenizer.from_pretrained(src).save_pretrained(draft)
        for extra in ("preprocessor_config.json", "generation_config.json"):
            if (src / extra).is_file():
                (draft / extra).write_bytes((src / extra).read_bytes())
        print(edgemfm.export(edgemfm.ExportConfig(model=draft, device=args.device, out=args.out, force=True)))


if __name__ == "__main__":
    main()
