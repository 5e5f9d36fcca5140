"""One SmolLM2 row of benchmarks/side_by_side/run.py, measured in a process of its own (its peak memory is its own).

    python -m benchmarks.side_by_side.smollm2_rows ROW WORK_DIR JSON_SETTINGS   # prints one JSON object

Every row decodes the same prompt ids greedily for a fixed number of tokens (never stopping at
EOS, except ExecuTorch's runner, which cannot be told to: its rate counts the tokens it made)
and scores the same text's ids for perplexity. Times: medians of `repeats` runs after one warm-up.
Each runtime gets `threads` threads.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import numpy as np

from edgemfm.runtimes.decoding import nll


def timed_runs(once, repeats: int) -> dict:
    """Median (ttft, tokens/s) over `repeats` runs of `once()` after one warm-up run, and the peak memory so far
    (before the perplexity pass, whose full-length logits are not part of generating)."""
    from edgemfm.runtimes.budget import peak_resident_bytes

    once()
    runs = [once() for _ in range(repeats)]
    keys = ("ttft_s", "decode_tokens_per_s", "decode_tokens_per_cpu_s")
    return {
        "peak_rss_bytes": peak_resident_bytes(),
        **{k: statistics.median(r[i] for r in runs) for i, k in enumerate(keys)},
        "runs": {k: [r[i] for r in runs] for i, k in enumerate(keys)},
    }


class Clock:
    """Wall and process CPU time at the first token and at the end: under a shared machine's load the
    CPU seconds per token stay steady where wall-clock rates swing (every row runs on `threads` threads)."""

    def __init__(self):
        self.start = time.perf_counter()

    def first(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rates(self, tokens: int) -> tuple[float, float, float]:
        """(seconds to the first token, tokens/s after it, tokens per CPU second after it) for `tokens` generated."""
        return (
            self.wall - self.start,
            (tokens - 1) / (time.perf_counter() - self.wall),
            (tokens - 1) / (time.process_time() - self.cpu),
        )


def onnx_weight_bytes(path: Path) -> int:
    """Bytes of the initializers a decode step reads: all but tables only looked up by Gather (one row read)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    gathered = {n.input[0] for n in model.graph.node if n.op_type in ("Gather", "GatherBlockQuantized")}
    used = {i for n in model.graph.node if n.op_type not in ("Gather", "GatherBlockQuantized") for i in n.input}
    used |= {i for n in model.graph.node if n.op_type in ("Gather", "GatherBlockQuantized") for i in n.input[1:]}
    total = 0
    for t in model.graph.initializer:
        if t.name in gathered and t.name not in used:
            continue
        total += math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


class OrtDecoder:
    """A Python greedy loop over an ids-in ONNX decoder with a KV cache (the plain and ORT-quantized exports)."""

    def __init__(self, path: Path, threads: int, kv_heads: int, head_dim: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.past = [n for n in self.inputs if n.startswith("past")]
        self.kv_heads, self.head_dim = kv_heads, head_dim  # the graphs name these axes differently

    def feeds(self, ids: list[int], past: list[np.ndarray] | None, at: int) -> dict[str, np.ndarray]:
        """The graph's inputs for `ids` at position `at` after the cache `past` (None: empty)."""
        past = past or [np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32) for _ in self.past]
        feeds = {
            "input_ids": np.asarray([ids], np.int64),
            "attention_mask": np.ones((1, at + len(ids)), np.int64),
            **dict(zip(self.past, past)),
        }
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.arange(at, at + len(ids), dtype=np.int64)[None]
        return feeds

    def run(self, ids: list[int], past: list[np.ndarray] | None, at: int) -> tuple[np.ndarray, list[np.ndarray]]:
        out = self.session.run(None, self.feeds(ids, past, at))
        return out[0][0], out[1:]

    def once(self, prompt: list[int], tokens: int) -> tuple[float, float]:
        clock = Clock()
        logits, past = self.run(prompt, None, 0)
        token = int(np.argmax(logits[-1]))
        clock.first()
        for i in range(tokens - 1):
            logits, past = self.run([token], past, len(prompt) + i)
            token = int(np.argmax(logits[-1]))
        return clock.rates(tokens)

    def perplexity(self, ids: list[int]) -> float:
        logits, _ = self.run(ids[:-1], None, 0)
        return math.exp(nll(logits, ids[1:]) / (len(ids) - 1))


def torch_row(work: Path, s: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(s["threads"])
    model = AutoModelForCausalLM.from_pretrained(work / "hf", dtype=torch.float32).eval()
    prompt = torch.tensor([s["prompt_ids"]])

    @torch.inference_mode()
    def once():  # the eager loop of gpt-fast / nanoGPT: one forward per token on the cache
        clock = Clock()
        out = model(input_ids=prompt, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        clock.first()
        for _ in range(s["tokens"] - 1):
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        return clock.rates(s["tokens"])

    result = timed_runs(once, s["repeats"])
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([s["text_ids"][:-1]])).logits[0].numpy()
    result["perplexity"] = math.exp(nll(logits, s["text_ids"][1:]) / (len(s["text_ids"]) - 1))
    result["weights_read_per_token_bytes"] = sum(
        p.numel() * p.element_size() for p in model.parameters()
    )  # the tied table counted once: the head reads it
    result["size_bytes"] = sum(f.stat().st_size for f in (work / "hf").glob("*.safetensors"))
    return result


def ort_row(path: Path, s: dict) -> dict:
    decoder = OrtDecoder(path, s["threads"], s["kv_heads"], s["head_dim"])
    result = timed_runs(lambda: decoder.once(s["prompt_ids"], s["tokens"]), s["repeats"])
    result["perplexity"] = decoder.perplexity(s["text_ids"])
    result["weights_read_per_token_bytes"] = onnx_weight_bytes(path)
    result["size_bytes"] = sum(f.stat().st_size for f in path.parent.iterdir() if f.name.startswith(path.name))
    return result


def genai_row(folder: Path, s: dict) -> dict:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    total = len(s["prompt_ids"]) + s["tokens"]

    def once():  # onnxruntime-genai's own C++ loop
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        generator = og.Generator(model, params)
        clock = Clock()
        generator.append_tokens(s["prompt_ids"])
        generator.generate_next_token()
        clock.first()
        while not generator.is_done():
            generator.generate_next_token()
        return clock.rates(s["tokens"])

    result = timed_runs(once, s["repeats"])
    # perplexity from the same graph and kernels, all positions' logits in one ORT call
    result["perplexity"] = OrtDecoder(folder / "model.onnx", s["threads"], s["kv_heads"], s["head_dim"]).perplexity(
        s["text_ids"]
    )
    result["weights_read_per_token_bytes"] = onnx_weight_bytes(folder / "model.onnx")
    result["size_bytes"] = sum(f.stat().st_size for f in folder.glob("model.onnx*"))
    return result


def executorch_row(pte: Path, tokenizer: Path, s: dict) -> dict:
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (registers llama::custom_sdpa and update_cache kernels)
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner
    from tokenizers import Tokenizer

    from edgemfm.runtimes.executorch import set_threads

    set_threads(s["threads"])  # ExecuTorch's pool and torch's, which custom_sdpa's kernel splits on
    runner = TextLLMRunner(str(pte), str(tokenizer))
    # the chat template's special tokens too: the runner's tokenizer reads them back from the text
    prompt = Tokenizer.from_file(str(tokenizer)).decode(s["prompt_ids"], skip_special_tokens=False)

    def once():  # ExecuTorch's own C++ runner; the first token's callback marks the clocks
        clock, pieces = Clock(), []
        runner.reset()
        config = GenerationConfig(
            echo=False, max_new_tokens=s["tokens"], temperature=0.0, seq_len=len(s["prompt_ids"]) + s["tokens"] + 8
        )
        runner.generate(prompt, config, token_callback=lambda piece: (pieces or clock.first(), pieces.append(piece)))
        return clock.rates(len(pieces))  # it stops at EOS: the tokens it made

    result = timed_runs(once, s["repeats"])
    result["perplexity"] = _pte_perplexity(pte, s["text_ids"])
    import torch

    table = s["vocab"] * s["hidden"] * torch.float32.itemsize  # the fp32 embedding table in the file: only looked up
    result["size_bytes"] = pte.stat().st_size
    result["weights_read_per_token_bytes"] = pte.stat().st_size - table
    return result


def _pte_perplexity(pte: Path, ids: list[int]) -> float:
    """Token by token through the program's forward (it returns the last position's logits only)."""
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(pte).load_method("forward")
    total = 0.0
    for i, token in enumerate(ids[:-1]):
        logits = method.execute([torch.tensor([[token]]), torch.tensor([i])])[0].reshape(-1).numpy()
        total += nll(logits[None], [ids[i + 1]])
    return math.exp(total / (len(ids) - 1))


def edgemfm_row(bundle: Path, s: dict) -> dict:
    from edgemfm.bench import BenchConfig, measure
    from edgemfm.records import to_dict

    r = to_dict(  # the side-by-side JSON's own row: plain values
        measure(
            bundle,
            BenchConfig(
                prompt=s["prompt"], tokens=s["tokens"], repeats=s["repeats"], threads=s["threads"], text=s["text"]
            ),
        )
    )
    return {
        k: r[k]
        for k in (
            "ttft_s",
            "decode_tokens_per_s",
            "decode_tokens_per_cpu_s",
            "runs",
            "perplexity",
            "weights_read_per_token_bytes",
            "size_bytes",
            "peak_rss_bytes",
        )
    }


ROWS = {  # the kind before ":" in a row spec -> how to measure it, given WORK_DIR / the part after ":"
    "torch": lambda work, arg, s: torch_row(work, s),
    "ort": lambda work, arg, s: ort_row(work / arg, s),
    "genai": lambda work, arg, s: genai_row(work / arg, s),
    "executorch": lambda work, arg, s: executorch_row(work / arg, work / "hf" / "tokenizer.json", s),
    "edgemfm": lambda work, arg, s: edgemfm_row(work / arg, s),
}


def main() -> None:
    from .run import row_arguments

    row, work, settings = row_arguments(__doc__)
    kind, _, arg = row.partition(":")
    print(json.dumps(ROWS[kind](work, arg, settings)))


if __name__ == "__main__":
    main()
