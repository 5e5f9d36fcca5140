"""`edgemfm bench`: every figure present, positive and finite; JSON and PNG written; mistakes in one line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from edgemfm.bench import BenchConfig, BenchReport, BenchResult, EncoderTime, Machine, Runs, read_report
from edgemfm.cli import main
from edgemfm.records import from_dict, to_dict

EVAL_TEXT = Path(__file__).parents[1] / "benchmarks" / "eval_en.txt"
FAST = ["--tokens", "4", "--repeats", "2", "--warmup", "0"]


def test_bench_writes_json_and_png(default_bundle, tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = [
        "bench",
        str(default_bundle),
        "--baselines",
        str(default_bundle),
        "--json",
        str(out),
        "--plot",
        str(png),
        "--text",
        str(EVAL_TEXT),
        *FAST,
    ]
    assert main(argv) == 0
    report = read_report(out)
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(default_bundle / "tokenizer.json")).encode(EVAL_TEXT.read_text()).ids
    expected = min(len(ids), json.loads((default_bundle / "manifest.json").read_text())["streaming"]["max_seq_len"]) - 1
    assert report.memory_bandwidth_bytes_per_s > 1e8
    assert set(to_dict(report.machine)) == {"cpu", "cores", "load_average", "platform"}
    assert len(report.results) == 2  # the bundle and its baseline, each measured in its own process
    for r in report.results:
        for key in (
            "size_bytes",
            "weights_read_per_token_bytes",
            "ttft_s",
            "decode_tokens_per_s",
            "decode_tokens_per_cpu_s",
            "decode_efficiency",
            "peak_rss_bytes",
            "perplexity",
        ):
            assert math.isfinite(getattr(r, key)) and getattr(r, key) > 0, key
        assert len(r.runs.decode_tokens_per_s) == 2
        assert (
            r.perplexity_tokens == expected
        )  # every token of the text (up to the cache's length) after the first is scored
        assert r.encoders["vision_encoder"].ms_per_image > 0
        assert r.peak_rss_bytes > r.weights_read_per_token_bytes
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "edgemfm bench:" in capsys.readouterr().out


def test_bench_report_round_trips_through_json():
    result = BenchResult(
        bundle="bundles/int4",
        model_id="demo",
        profile="host",
        precision="int4",
        provider="CPUExecutionProvider",
        size_bytes=1000,
        weights_read_per_token_bytes=800,
        ttft_s=0.02,
        decode_tokens_per_s=50.0,
        decode_tokens_per_cpu_s=55.0,
        runs=Runs(ttft_s=(0.02, 0.03), decode_tokens_per_s=(50.0, 49.0), decode_tokens_per_cpu_s=(55.0, 54.0)),
        encoders={
            "vision_encoder": EncoderTime(ms_per_image=3.5),
            "audio_encoder": EncoderTime(ms_per_audio_second=9.0),
        },
        perplexity=None,
        perplexity_tokens=0,
        sqnr_db={"text_decoder": 21.5},
        peak_rss_bytes=2**26,
        decode_efficiency=0.4,
    )
    report = BenchReport(
        machine=Machine(cpu="test cpu", cores=2, load_average=(1.0, 0.5, 0.25), platform="Linux"),
        memory_bandwidth_bytes_per_s=3e9,
        config=BenchConfig(tokens=4, text="eval.txt"),
        results=(result,),
    )
    assert from_dict(BenchReport, json.loads(json.dumps(to_dict(report)))) == report


def test_perplexity_does_not_depend_on_the_prefill_chunk(default_bundle):
    import edgemfm
    from edgemfm.bench import perplexity

    text = EVAL_TEXT.read_text()
    whole, n = perplexity(edgemfm.load(default_bundle, prefill_chunk=500, max_seq_len=512), text)
    chunked, m = perplexity(edgemfm.load(default_bundle, prefill_chunk=7, max_seq_len=512), text)
    assert n == m and abs(whole - chunked) / whole < 1e-4


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tokens", "1"], "tokens 1 is not allowed"),
        (["--plot", "chart.jpg"], "plot file 'chart.jpg' is not allowed"),
        (["--text", "missing.txt"], "text file 'missing.txt' does not exist"),
        (["--baselines", "no-such-bundle"], "bundle 'no-such-bundle' is not a directory"),
        (["--device", "toaster"], "unknown device 'toaster'; known: "),  # hung in a worker that could not pickle it
    ],
)
def test_bench_rejects_bad_input_in_one_line(default_bundle, extra, message, capsys):
    assert main(["bench", str(default_bundle), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bench_module_stays_free_of_torch():
    code = "import sys, edgemfm.bench; bad = [m for m in ('torch', 'transformers', 'onnx') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
