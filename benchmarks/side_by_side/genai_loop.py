"""The same decoder driven by onnxruntime-genai's C++ loop, against edgemfm's Python loop.

onnxruntime-genai takes a decoder fed with token ids, so the bundle's token embedding is
merged in front of its text decoder (onnx.compose) into a scratch model with a genai_config.json.
Both loops decode greedily from the same prompt; the tokens must agree. Needs the export and
bench extras (onnx, onnxruntime-genai).

    python -m benchmarks.side_by_side.genai_loop BUNDLE [--tokens 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import edgemfm

from .. import record


def genai_model(bundle: Path, out: Path) -> None:
    """Write token_embedding + text_decoder as one ids-in graph and its genai_config.json to `out`."""
    import onnx
    import onnx.compose

    manifest = edgemfm.load(bundle).manifest
    embedding = onnx.compose.add_prefix(onnx.load(bundle / manifest.components["token_embedding"].file), "embedding_")
    decoder_graph = onnx.load(bundle / manifest.components["text_decoder"].file)
    # merge_graphs, not merge_models: the latter's checker rejects ONNX Runtime's fused ops (SimplifiedLayerNormalization)
    graph = onnx.compose.merge_graphs(
        embedding.graph, decoder_graph.graph, io_map=[("embedding_inputs_embeds", "inputs_embeds")]
    )
    merged = onnx.helper.make_model(
        graph, opset_imports=decoder_graph.opset_import, ir_version=decoder_graph.ir_version
    )
    for value in merged.graph.input:
        value.name = "input_ids" if value.name == "embedding_input_ids" else value.name
    for node in merged.graph.node:
        node.input[:] = ["input_ids" if x == "embedding_input_ids" else x for x in node.input]
    onnx.save(merged, out / "model.onnx")
    (out / "tokenizer.json").write_bytes((bundle / manifest.tokenizer.file).read_bytes())
    decoder = manifest.components["text_decoder"]
    kv, hidden = decoder.kv_cache, decoder.inputs[0].shape[-1]
    vocab = decoder.outputs[0].shape[-1]
    config = {
        "model": {
            "type": "llama",
            "context_length": 4096,
            "vocab_size": vocab,
            "bos_token_id": manifest.tokenizer.bos_token_id,
            "eos_token_id": list(manifest.tokenizer.eos_token_ids),
            "pad_token_id": manifest.tokenizer.eos_token_ids[0],
            "decoder": {
                "filename": "model.onnx",
                "session_options": {"intra_op_num_threads": 1, "provider_options": []},
                "head_size": kv.head_dim,
                "hidden_size": hidden,
                "num_attention_heads": hidden // kv.head_dim,
                "num_hidden_layers": kv.layers,
                "num_key_value_heads": kv.kv_heads,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": kv.past.format(layer="%d", kind="key"),
                    "past_value_names": kv.past.format(layer="%d", kind="value"),
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": kv.present.format(layer="%d", kind="key"),
                    "present_value_names": kv.present.format(layer="%d", kind="value"),
                },
            },
        },
        "search": {"do_sample": False, "max_length": 4096, "num_beams": 1, "past_present_share_buffer": False},
    }
    (out / "genai_config.json").write_text(json.dumps(config, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt", default="Tell me a story.")
    args = p.parse_args()
    import onnxruntime_genai as og

    pipe = edgemfm.load(args.bundle, threads=1)
    ids = pipe.prompt_ids(args.prompt)
    with tempfile.TemporaryDirectory() as scratch:
        genai_model(args.bundle, Path(scratch))
        model = og.Model(scratch)
        result = {"bundle": str(args.bundle), "tokens": args.tokens}
        for name in ("edgemfm", "genai"):
            best = 0.0
            for _ in range(args.repeats):
                if name == "edgemfm":
                    steps = pipe.generate_tokens(args.prompt, max_new_tokens=args.tokens)
                    tokens = [next(steps)]
                    cpu = time.process_time()
                    tokens += list(steps)
                else:
                    params = og.GeneratorParams(model)
                    params.set_search_options(max_length=len(ids) + args.tokens, do_sample=False)
                    generator = og.Generator(model, params)
                    generator.append_tokens(ids)  # prefill
                    generator.generate_next_token()
                    tokens = [int(generator.get_next_tokens()[0])]
                    cpu = time.process_time()
                    while not generator.is_done():
                        generator.generate_next_token()
                        tokens.append(int(generator.get_next_tokens()[0]))
                best = max(best, (len(tokens) - 1) / (time.process_time() - cpu))
            result[f"{name}_cpu_tok_s"] = round(best, 1)
            result[f"{name}_tokens"] = tokens[: args.tokens]
        result["identical"] = result.pop("edgemfm_tokens") == result.pop("genai_tokens")
    print(json.dumps(result))
    record.write("genai_loop", [result])


if __name__ == "__main__":
    main()
