"""The side-by-side table's builds put what they make under --work (benchmarks/side_by_side/)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_executorchs_own_smollm2_program_is_written_under_the_work_folder(tmp_path, monkeypatch):
    """export_llm writes its program to output_dir/output_name.pte, but takes an output_name that ends in .pte as
    a path from the current directory (executorch 1.5.1, export_llama_lib._get_output_filename): session 7's build
    left smollm2_8da4w.pte in the directory it ran from."""
    from omegaconf import OmegaConf

    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.side_by_side.smollm2 import write_export_llm_config

    config = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_theta": 10000.0},
        "vocab_size": 100,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    out = tmp_path / "executorch.partial"
    out.mkdir()
    export = OmegaConf.load(write_export_llm_config(out, config)).export
    assert not export.output_name.endswith(".pte") and Path(export.output_dir) == out.resolve()
    assert json.loads((out / "params.json").read_text())["n_kv_heads"] == 2
