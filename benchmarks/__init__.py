"""edgemfm's benchmarks: scripts in subject folders, run from the repository root as modules.

    python -m benchmarks.side_by_side.run --help
    python -m benchmarks.quantization.smollm2_perplexity --help
    python -m benchmarks.render            # BENCHMARKS.md from benchmarks/results/*.json

Every script writes its results to benchmarks/results/<name>.json (benchmarks.results.write);
BENCHMARKS.md is generated from those files and never edited by hand.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the repository: samples/, quantizers/ and BENCHMARKS.md live there
EVAL_TEXT = HERE / "eval_en.txt"  # a held-out English passage (344 SmolLM2 tokens), never calibrated on
RESULTS = HERE / "results"
