"""`edgemfm tune`: the frontier, the choice under a budget, the plot, --apply, and the fan-out backends.

Fast tests run on the placeholder model's bundle (fidelity to float is the quality there); the
demo model on `pi5` with its held-out questions, and a local Ray cluster, run under -m slow.
"""

from __future__ import annotations

import math
import sys

import pytest

import edgemfm
from edgemfm.cli import main
from edgemfm.errors import EdgemfmError, InputError
from edgemfm.jobs import run_jobs
from edgemfm.tune import choose, tune


@pytest.fixture(scope="module")
def result(default_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "pi5"
    return tune("pi5", latency_budget_ms=5.0, bundle=default_bundle, apply=out), out


def _dominates(a, b) -> bool:
    return (
        a.latency_ms <= b.latency_ms
        and a.memory_mb <= b.memory_mb
        and a.quality >= b.quality
        and (a.latency_ms < b.latency_ms or a.memory_mb < b.memory_mb or a.quality > b.quality)
    )


def test_the_frontier_is_exactly_the_non_dominated_points(result):
    r, _ = result
    # placeholder: 3 decoder precisions x 2 vision precisions x 3 sequence lengths
    assert len(r.points) == 18
    front = [p for p in r.points if p.frontier]
    assert 2 <= len(front) < len(r.points)
    for p in r.points:
        assert p.frontier == (not any(_dominates(q, p) for q in r.points))
    # int8/int4 parts measured against float: high, but below the float graphs' 1.0
    assert 0.8 < min(p.quality for p in r.points) < max(p.quality for p in r.points) == pytest.approx(1.0)


def test_the_chosen_point_is_the_best_quality_within_the_predicted_budget(result):
    r, _ = result
    assert r.chosen.latency_ms <= 5.0 and r.chosen.memory_mb <= r.profile.default_memory_budget_mb
    fits = [p for p in r.points if p.latency_ms <= 5.0]
    assert r.chosen.quality == max(p.quality for p in fits)
    assert any(p.latency_ms > 5.0 and p.quality > r.chosen.quality for p in r.points)  # the budget cost quality


def test_apply_writes_the_chosen_point_as_a_bundle_that_runs(result, picture):
    r, out = result
    m = edgemfm.bundle.read_manifest(out)
    for name, precision in r.chosen.candidate.precisions:
        spec = m.recipe.spec_for(name)
        assert (spec.bits if spec else 32) == {"fp32": 32, "int8": 8, "int4": 4}[precision]
    assert m.profile == "raspberry-pi-5-8gb" and m.streaming.max_seq_len == r.chosen.candidate.seq_len
    assert m.report.tune.latency_ms == pytest.approx(r.chosen.latency_ms)
    assert len("".join(edgemfm.load(out).generate("What is this?", images=[picture], max_new_tokens=3))) > 0


def test_the_chosen_point_is_run_on_this_host_beside_its_host_prediction(result):
    """Measured through the runtime (a timing, so only its presence is checked); the cost model's
    host figure for the same candidate is below its pi5 figure (a faster device, a shorter prompt)."""
    r, _ = result
    assert r.host is not None and r.host.measured_ms > 0
    assert 0 < r.host.predicted_ms < r.chosen.latency_ms


def test_an_impossible_budget_is_one_line_with_needed_and_allowed(default_bundle, tmp_path, capsys):
    """Through the CLI: the error comes after the search (the needed figure is what it found)."""
    code = main(
        [
            "tune",
            "--device",
            "pi5",
            "--latency-budget",
            "0.01",
            "--bundle",
            str(default_bundle),
            "--plot",
            str(tmp_path / "f.png"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "the fastest needs" in err and "allowed: 0.01 ms" in err
    assert not (tmp_path / "f.png").exists()


def test_an_existing_apply_directory_is_refused_before_any_work(default_bundle, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert (
        main(
            [
                "tune",
                "--device",
                "pi5",
                "--latency-budget",
                "5",
                "--bundle",
                str(default_bundle),
                "--apply",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "already exists; pass --force" in capsys.readouterr().err


def test_choose_refuses_a_memory_budget_nothing_fits(result):
    r, _ = result
    with pytest.raises(InputError, match=r"the smallest \d+ MB; allowed: 1000 ms and 0.5 MB"):
        choose(r.points, 1000.0, 0.5)


def test_the_cli_prints_the_frontier_and_writes_the_plot_and_every_point(default_bundle, tmp_path, capsys):
    import json

    assert (
        main(
            [
                "tune",
                "--device",
                "pi5",
                "--latency-budget",
                "5",
                "--bundle",
                str(default_bundle),
                "--plot",
                str(tmp_path / "f.png"),
                "--json",
                str(tmp_path / "f.json"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    points = json.loads((tmp_path / "f.json").read_text())["points"]
    assert len(points) == 18 and sum(p["chosen"] for p in points) == 1
    assert f"{sum(p['frontier'] for p in points)} on the frontier" in text and "chosen:" in text
    host = json.loads((tmp_path / "f.json").read_text())["host"]
    assert f"chosen point on this host: {host['measured_ms']:.1f} ms measured" in text.replace("\n", " ")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_the_plot_is_a_png(result, tmp_path):
    from edgemfm.tune import plot

    path = plot(result[0], tmp_path / "frontier.png", 5.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_a_pool_runs_jobs_and_ray_is_asked_for_by_name(monkeypatch):
    assert run_jobs(math.sqrt, [4.0, 9.0], workers=2) == [2.0, 3.0]
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(EdgemfmError, match=r"--ray needs Ray: pip install 'edgemfm\[ray\]'"):
        run_jobs(math.sqrt, [4.0], ray_address="auto")


@pytest.mark.slow
def test_a_local_ray_cluster_runs_the_jobs():
    import ray

    try:
        assert run_jobs(math.sqrt, [4.0, 9.0, 16.0], ray_address="local") == [2.0, 3.0, 4.0]
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_demo_model_on_pi5_meets_its_latency_budget_with_held_out_questions(demo_bundle, tmp_path):
    """The demo model's media knobs, precisions and sequence lengths on pi5, quality measured on
    12 held-out questions of each kind ($EDGEMFM_DEMO_DATA, else built by build_dataset.py)."""
    import os

    data = os.environ.get("EDGEMFM_DEMO_DATA")
    if data is None:
        pytest.skip("set EDGEMFM_DEMO_DATA to a folder samples/demo_model/build_dataset.py wrote")
    r = tune("pi5", latency_budget_ms=150.0, bundle=demo_bundle, data=data, questions=12, scratch=tmp_path)
    assert r.chosen.latency_ms <= 150.0
    assert len(r.points) > 100 and any(p.latency_ms > 150.0 for p in r.points)
    # 2026-11-28: the chosen int4 decoder answered 12 of 24 (fp32 decoders, at 300 ms, 18 of 24)
    assert r.chosen.quality >= 0.4
    assert r.chosen.quality == max(p.quality for p in r.points if p.latency_ms <= 150.0)


def test_visual_token_budgets_are_a_dimension_and_the_chosen_bundle_carries_its_budget(
    placeholder_model, default_bundle, tmp_path, picture
):
    """The placeholder's CLIP grid (7 x 7 rows) searched at its own 49 rows and a budget of 7: the budget's
    point is faster at the same fidelity, so it is chosen, and --apply writes its pooled encoder."""
    from edgemfm.tune import Space
    from edgemfm.tune.parts import TOKENS

    space = Space(image=(), audio=(), seq_lens=(256,), encoder_precisions=("fp32",), decoder_precisions=("fp32",))
    r = tune(
        "pi5", 1e6, model=placeholder_model, bundle=default_bundle, space=space, scratch=tmp_path,
        apply=tmp_path / "tuned", visual_tokens=(7,),
    )  # fmt: skip
    points = {dict(p.candidate.settings)["vision_encoder"]: p for p in r.points}
    assert set(points) == {(), (TOKENS, 7)}
    assert points[(TOKENS, 7)].latency_ms < points[()].latency_ms  # 7 rows prefilled instead of 49
    assert dict(r.chosen.candidate.settings)["vision_encoder"] == (TOKENS, 7)
    assert r.chosen.candidate.describe(r.manifest)["vision_encoder"] == "fp32 <=7 tokens"
    pipe = edgemfm.load(tmp_path / "tuned")
    assert pipe.manifest.prompt.media["image"].visual_tokens == 7
    (item,) = pipe.prepare({"image": [picture]})["image"]
    assert [pipe.encode("image", call).shape[-2] for call in item.calls] == [7]
    assert len(list(pipe.generate_tokens("What is it?", images=[picture], max_new_tokens=3))) <= 3


def test_tune_refuses_visual_tokens_for_a_family_without_the_capability_in_one_line(default_bundle):
    from dataclasses import replace

    from edgemfm.bundle import read_manifest
    from edgemfm.errors import UnsupportedModelError
    from edgemfm.tune import Space
    from edgemfm.tune.parts import settings_of

    space = Space((), (), (256,), ("fp32",), ("fp32",), visual_tokens=(4,))
    manifest = replace(read_manifest(default_bundle), family="qwen2_audio")  # a family with no visual_tokens
    with pytest.raises(
        UnsupportedModelError, match="'qwen2_audio' for export --visual-tokens; supported: edgemfm-demo"
    ):
        settings_of(space, manifest, "vision_encoder")


def test_cascade_mode_chooses_a_small_bundle_cheaper_than_the_float_one(default_bundle, picture, tmp_path, capsys):
    """Tiny bundles (random weights: quantized answers often differ from float's): each candidate calibrated against
    the float bundle's own answers. At tolerance 0 no cheaper candidate keeps them all, so the float bundle is its own
    small bundle (nothing escalated); at 0.34 an int8 decoder agreeing on some questions, the rest escalated, costs
    less per question than the float bundle alone."""
    import json

    from edgemfm.runtimes.cascade import Calibration

    data = tmp_path / "data"
    data.mkdir()
    (data / "p.png").write_bytes(picture.read_bytes())
    rows = [{"image": "p.png", "prompt": q, "answer": "-"} for q in ("What is it?", "Colours?", "Count the shapes.")]
    (data / "eval.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    out = tmp_path / "cascade.json"
    argv = ["tune", "--device", "pi5", "--latency-budget", "1000", "--bundle", str(default_bundle), "--data", str(data)]
    assert main([*argv, "--cascade", str(out), "--tolerance", "0", "--plot", str(tmp_path / "f.png")]) == 0
    assert "cascade:" in capsys.readouterr().out
    c = Calibration.read(out)
    assert c.questions == 3 and c.against == "large" and c.cascade_accuracy == 1.0
    r = tune("pi5", 1000, bundle=default_bundle, data=data, cascade=True, tolerance=0.34, scratch=tmp_path)
    large = max(
        (p for p in r.points if all(v == "fp32" for _, v in p.candidate.precisions)), key=lambda p: p.latency_ms
    )
    assert r.cascade.large_ms == large.latency_ms and r.chosen is r.cascade.point
    assert r.chosen.latency_ms < large.latency_ms and r.cascade.cost_ms < large.latency_ms
    assert r.cascade.cost_ms == pytest.approx(r.chosen.latency_ms + r.cascade.calibration.escalated * large.latency_ms)
    assert r.cascade.calibration.cascade_accuracy >= 1 - 0.34
    with pytest.raises(InputError, match=r"the cheapest cascade costs .* allowed: 1 ms"):
        tune("pi5", 1.0, bundle=default_bundle, data=data, cascade=True, tolerance=0.34, scratch=tmp_path)


def test_cascade_mode_without_data_is_one_line_naming_what_is_allowed(default_bundle, tmp_path, capsys):
    argv = ["tune", "--device", "pi5", "--latency-budget", "1000", "--bundle", str(default_bundle)]
    assert main([*argv, "--cascade", str(tmp_path / "c.json")]) == 2
    assert capsys.readouterr().err.strip().endswith("allowed: --cascade with --data DIR (an eval.jsonl)")
    with pytest.raises(InputError, match="allowed: --cascade with --data DIR"):
        tune("pi5", 1000, bundle=default_bundle, cascade=True)


@pytest.fixture(scope="module")
def pruned_bundle(placeholder_model, tmp_path_factory):
    """The placeholder model with 2 of its 4 decoder blocks pruned, exported fp32 for the host (a candidate bundle)."""
    out = tmp_path_factory.mktemp("pruned") / "placeholder-blocks-2"
    return edgemfm.export(edgemfm.ExportConfig(model=placeholder_model, device="host", out=out, prune=("blocks=2",)))


def _questions(tmp_path, picture):
    import json

    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "p.png").write_bytes(picture.read_bytes())
    rows = [{"image": "p.png", "prompt": q, "answer": "-"} for q in ("What is it?", "Colours?", "Count the shapes.")]
    (data / "eval.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    return data


@pytest.mark.slow
def test_cascade_mode_can_choose_a_pruned_candidate_bundle(default_bundle, pruned_bundle, picture, tmp_path):
    """A candidate bundle is searched at every precision mix beside the source, all its components its own. Under a
    memory budget that none of the source's points fits (2.7 MB: its smallest, int4 at 256 positions, needs 3.0; the
    pruned one 2.4), the cascade's small bundle is the pruned int4 one, its cost its own latency plus its escalations
    to the source (the large bundle, never a candidate); --apply writes it with the pruned decoder's graph."""
    data, out = _questions(tmp_path, picture), tmp_path / "small"
    options = dict(bundle=default_bundle, data=data, cascade=True, tolerance=0.34, scratch=tmp_path)
    with pytest.raises(InputError, match="no small bundle fits: the smallest needs 3 MB; allowed: 2.7 MB"):
        tune("pi5", 1000, 2.7, **options)  # without the candidate
    r = tune("pi5", 1000, 2.7, **options, candidate_bundles=(pruned_bundle,), apply=out)
    tag = ("candidate bundle", str(pruned_bundle))
    ours = [p for p in r.points if all(s != tag for _, s in p.candidate.settings)]
    theirs = [p for p in r.points if all(s == tag for _, s in p.candidate.settings)]
    assert len(ours) + len(theirs) == len(r.points) and len(theirs) == len(ours) == 18  # none mixes two bundles
    assert r.chosen.candidate.describe(r.manifest)["text_decoder"] == "int4 (placeholder-blocks-2)"
    assert r.chosen.memory_mb <= 2.7 < min(p.memory_mb for p in ours)
    large = max((p for p in ours if all(v == "fp32" for _, v in p.candidate.precisions)), key=lambda p: p.latency_ms)
    assert r.cascade.large_ms == large.latency_ms > max(p.latency_ms for p in theirs)
    assert r.cascade.cost_ms == pytest.approx(r.chosen.latency_ms + r.cascade.calibration.escalated * large.latency_ms)
    written = edgemfm.bundle.read_manifest(out).components["text_decoder"].kv_cache.layers
    assert written == edgemfm.bundle.read_manifest(pruned_bundle).components["text_decoder"].kv_cache.layers == 2


def test_a_candidate_that_is_not_a_bundle_of_the_model_is_one_line(default_bundle, tmp_path, capsys):
    """Refused before any part is built: not a bundle, another tokenizer, or no held-out questions to compare with."""
    from edgemfm.bundle import read_manifest, seal

    data = tmp_path / "data"
    data.mkdir()
    (data / "eval.jsonl").write_text('{"image": "p.png", "prompt": "What?", "answer": "-"}\n')
    argv = ["tune", "--device", "pi5", "--latency-budget", "1000", "--bundle", str(default_bundle), "--data", str(data)]
    assert main([*argv, "--candidates", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a bundle" in err
    assert err.endswith(
        "allowed: an fp32 bundle of the source's model and tokenizer (edgemfm prune, then edgemfm export)"
    )
    other = tmp_path / "other-tokenizer"  # the same graphs, another tokenizer file
    other.mkdir()
    manifest = read_manifest(default_bundle)
    for name in manifest.files:
        (other / name).write_bytes((default_bundle / name).read_bytes())
    (other / manifest.tokenizer.file).write_bytes((default_bundle / manifest.tokenizer.file).read_bytes() + b" ")
    seal(other, manifest)
    with pytest.raises(InputError, match=r"differs from the source in its tokenizer sha256 .* allowed: an fp32 bundle"):
        tune("pi5", 1000, bundle=default_bundle, data=data, candidate_bundles=(other,), scratch=tmp_path)
    with pytest.raises(InputError, match="is the source bundle itself"):
        tune("pi5", 1000, bundle=default_bundle, data=data, candidate_bundles=(default_bundle,), scratch=tmp_path)
    with pytest.raises(InputError, match="allowed: --candidates with --data DIR"):
        tune("pi5", 1000, bundle=default_bundle, candidate_bundles=(other,))
