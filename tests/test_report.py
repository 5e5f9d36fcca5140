"""The bundle report as records: every record round-trips through JSON, unknown keys are refused,
and version 1 manifests (written before the report was typed) still read into the same values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgemfm.errors import BundleError, ConfigError
from edgemfm.manifest import SCHEMA_VERSION, Manifest
from edgemfm.records import from_dict, to_dict
from edgemfm.report import (
    AppliedScheme,
    ChannelScores,
    Delegation,
    FinetuneReport,
    Fusion,
    Judged,
    Loss,
    Parameters,
    Parity,
    Plan,
    PlanGroup,
    PruneCalibration,
    PruneStage,
    Pruning,
    Quantization,
    Recovery,
    Report,
    Share,
    Tune,
)

V1 = Path(__file__).parent / "fixtures" / "v1"

FUSION = Fusion(
    nodes_before=520,
    nodes_after=212,
    fused_ops={"GroupQueryAttention": 4, "SkipSimplifiedLayerNormalization": 8},
    unfused_ops={"Sigmoid": 4},
    rules_fired={"group_query_attention.group_query_attention": 4},
)
STAGES = (
    PruneStage("blocks", 1, (2,), "lowest 1 - cos", scores=(0.1, 0.2, 0.01), summary=Share(0.01, 0.15, 0.03)),
    PruneStage("heads", 1, {"0": (1,)}, "lowest norm", parameters_removed=1200, scores={"0": (0.5, 0.1, 0.9)}),
    PruneStage(
        "mlp",
        2,
        {"0": (3, 7)},
        "lowest magnitude",
        component="vision_encoder",
        scores={"0": ChannelScores((0.1,), 0.3)},
    ),
)
FULL = Report(
    precision="auto",
    parity={
        "text_decoder": Parity(1.2e-5, 8.5, 1e-4, max_abs_diff_unfused=1.1e-5, nodes=212, fusion=FUSION),
        "vision_encoder": Parity(nodes=90, fusion=Fusion(skipped="export --no-fuse")),
    },
    float_units={"text_decoder/lm_head": "the plan kept it float"},
    quantization={
        "text_decoder": Quantization(
            schemes=(AppliedScheme(4, 32, "rtn"), AppliedScheme(8, 0, "rtn")),
            quantized_units=28,
            float_units={"text_decoder/lm_head": "the plan kept it float"},
            notes={"text_decoder/layers.0/mlp.down_proj": "no calibration data reached this component"},
            quantized_nodes={"MatMulNBits": 27},
            weight_bytes=1234567,
            sqnr_db=21.5,
            cosine=0.9962,
            judged=Judged("text_decoder", 19.25),
            output="logits",
        ),
        "audio_encoder": Quantization((AppliedScheme(8, 0, "dynamic"),), 4, {}, {}, {"MatMulInteger": 4}, 4096),
    },
    plan=Plan(
        tolerance_db=20.0,
        memory_budget_mb=122.5,
        tolerance_met=True,
        measured_sqnr_db={"text_decoder": 21.5},
        judged_by={"text_decoder": "text_decoder", "token_embedding": "text_decoder"},
        groups={
            "text_decoder/layers.0": PlanGroup(4, 24.1, 4096, estimated=True),
            "text_decoder/lm_head": PlanGroup(32, 9.0, 2048),
        },
    ),
    pruning=Pruning(
        uniform="same count in every layer",
        parameters=Parameters(1000, 800, 200),
        stages=STAGES,
        calibration=PruneCalibration(samples=3, tokens=120, items={"text_decoder": "3 texts"}, data="built-in"),
        source="/models/llama",
        recovery=Recovery("distillation", {"steps": 4, "lr": 1e-3}, 3, 90, Loss(2.5, 1.25), 3.5),
        version=1,
        architecture="LlamaForCausalLM",
        config=({"blocks": 1, "heads": 0.34, "mlp": 0.0, "component": "text_decoder"},),
    ),
    delegation={"text_decoder": Delegation("XnnpackBackend", 3, 180, 2, {"aten_embedding_default": 1})},
    notes={"vision_encoder": "one 384x384 tile per batch row"},
    tune=Tune("pi5", 812.5, 640.0, 0.93, "exact match", {"vision_encoder": "int8 224px 2x2"}),
)


def test_a_full_report_round_trips_through_json():
    text = json.dumps(to_dict(FULL))
    assert from_dict(Report, json.loads(text)) == FULL
    unrecovered = Pruning("u", Parameters(2, 1, 1), STAGES[:1], PruneCalibration(1, 2, {}), recovery="not run")
    assert from_dict(Pruning, json.loads(json.dumps(to_dict(unrecovered)))) == unrecovered


def test_a_finetune_report_round_trips_through_json():
    report = FinetuneReport(
        "models/demo-base", 0, 40, 2, 3, 2, 1e-3, 1e-2, 0.5, (2.0, 1.5), 1.0, {"image": 0.5}, {"image": 2}, ()
    )
    assert from_dict(FinetuneReport, json.loads(json.dumps(to_dict(report)))) == report


def test_an_unknown_report_key_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"report: unknown key 'sqnr'; known: precision, parity, float_units"):
        from_dict(Report, {"precision": "int8", "sqnr": 20.0}, where="report")
    with pytest.raises(ConfigError, match=r"parity.text_decoder: unknown key 'diff'; known: max_abs_diff, scale"):
        from_dict(Report, {"parity": {"text_decoder": {"diff": 1e-5}}})


@pytest.mark.parametrize("name", ["manifest.json", "manifest-auto.json"])
def test_a_version_1_manifest_reads_into_the_typed_report_with_the_same_values(name):
    """Fixtures: the placeholder model exported for host (fp32, auto: quantization and plan) by edgemfm at a3dee2b, before the report was typed."""
    path = V1 / name
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1
    m = Manifest.from_json(path.read_text(), where=str(path))
    assert m.schema_version == SCHEMA_VERSION
    assert _without_defaults(to_dict(m.report), data["report"]) == data["report"]
    # the same bundle written again as version 2 reads back equal
    assert Manifest.from_json(m.to_json()) == m


def test_a_version_1_measuring_bundle_with_an_empty_tune_entry_reads_as_no_tune():
    data = json.loads((V1 / "manifest.json").read_text())
    m = Manifest.from_json(json.dumps({**data, "report": {**data["report"], "precision": "tune", "tune": {}}}))
    assert m.report.tune is None and m.report.precision == "tune"


def test_a_schema_version_neither_1_nor_2_names_the_versions_read():
    data = json.loads((V1 / "manifest.json").read_text())
    with pytest.raises(BundleError, match="schema version 7 is not supported; this edgemfm reads versions 1, 2"):
        Manifest.from_json(json.dumps({**data, "schema_version": 7}))


def _without_defaults(written: object, v1: object) -> object:
    """`written` limited to the keys `v1` has: version 2 also writes the defaults version 1 left out."""
    if isinstance(written, dict) and isinstance(v1, dict):
        return {k: _without_defaults(written[k], v1[k]) for k in v1}
    if isinstance(written, list) and isinstance(v1, list):
        return [_without_defaults(w, v) for w, v in zip(written, v1)]
    return written
