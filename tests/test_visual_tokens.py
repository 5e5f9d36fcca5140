"""`export --visual-tokens N`: the encoder graph of each VLM family emits at most N rows per image (tile),
the bundle records the budget, and an N the family cannot meet is refused naming the allowed ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_demo import tiny_demo
from tiny_models import tiny_idefics3, tiny_llava, tiny_qwen2_vl

import edgemfm
from edgemfm.cli import main
from edgemfm.errors import InputError, UnsupportedModelError
from edgemfm.exporters import family_named
from edgemfm.exporters.family import ExportUnit, Split
from edgemfm.exporters.visual_tokens import allowed_grid, budget, grid_pool, pool_shape

# family -> (tiny checkpoint builder, full rows per image or tile, the budget exported, an impossible one)
FAMILIES = {
    "llava": (
        tiny_llava,
        25,
        5,
        3,
    ),  # 30 px / 6 px patches: a 5x5 grid; 5 rows: each row of the grid pooled (1x5 cells)
    "idefics3": (tiny_idefics3, 4, 1, 3),  # per tile: (30 / 5 / 3)^2 after the pixel-shuffle connector
    "qwen2_vl": (tiny_qwen2_vl, 64, 16, 2),  # at most 64 rows of 8 px (4096 pixels); 16: 1024 pixels
}


class _Rows(torch.nn.Module):
    def forward(self, x):
        return x


def _split(rows: torch.Tensor) -> Split:
    unit = ExportUnit(_Rows(), (rows,), ("x",), ("rows",), {})
    return Split(units={"vision_encoder": unit}, prompt=None, preprocess=None, tokenizer=None, tokenizer_file=None)


def test_grid_pool_rows_are_the_means_of_their_cells():
    rows = torch.arange(16 * 3, dtype=torch.float32).reshape(1, 16, 3)  # a 4x4 grid of 3-wide rows
    split, note = grid_pool(_split(rows), 4, "toy")
    out = split.units["vision_encoder"].module(rows)
    grid = rows.reshape(4, 4, 3)
    assert out.shape == (1, 4, 3) and "16 -> 4" in note
    assert torch.equal(out[0, 0], grid[:2, :2].mean((0, 1))) and torch.equal(out[0, 3], grid[2:, 2:].mean((0, 1)))
    half, _ = grid_pool(_split(rows), 8, "toy")
    assert half.units["vision_encoder"].module(rows).shape == (1, 8, 3) and pool_shape(4, 8) == (1, 2)


def test_budgets_a_grid_cannot_meet_are_refused_naming_the_allowed_ones():
    assert allowed_grid(2) == (1, 2, 4) and allowed_grid(5) == (1, 5, 25)
    with pytest.raises(InputError, match=r"--visual-tokens 3 is not available for toy; allowed: 1, 2, 4, 8, 16"):
        grid_pool(_split(torch.zeros(1, 16, 3)), 3, "toy")
    with pytest.raises(InputError, match="no square grid"):  # a CLS row kept: 17 rows
        grid_pool(_split(torch.zeros(1, 17, 3)), 4, "toy")


def test_a_family_without_images_is_refused_by_name():
    with pytest.raises(UnsupportedModelError, match="for export --visual-tokens; supported: .*llava"):
        budget(family_named("whisper"), None, 4)


def test_the_budget_must_be_a_positive_whole_number(capsys):
    with pytest.raises(InputError, match="visual tokens 0"):
        edgemfm.ExportConfig(visual_tokens=0)
    assert main(["export", "--device", "host", "--visual-tokens", "0", "--dry-run"]) == 2
    assert "--visual-tokens: 0 is not allowed" in capsys.readouterr().err


# LLaVA in the default suite; the others' own pooling (per tile, M-RoPE rows) under -m slow (~15 s each on 2 cores)
@pytest.fixture(
    scope="module",
    params=[f if f == "llava" else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES],
)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def checkpoint(family, tmp_path_factory):
    return FAMILIES[family][0](tmp_path_factory.mktemp("models") / f"tiny-{family}")


def test_an_impossible_budget_is_refused_in_one_line(family, checkpoint, tmp_path, capsys):
    impossible = FAMILIES[family][3]
    out = tmp_path / "never"
    assert (
        main(
            [
                "export",
                "--model",
                str(checkpoint),
                "--device",
                "host",
                "--visual-tokens",
                str(impossible),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert f"--visual-tokens {impossible} is not available for {family}; allowed: " in err and "\n" not in err
    assert not out.exists()


def test_the_exported_encoder_emits_the_budget_and_generates(family, checkpoint, tmp_path, picture):
    full, n, _ = FAMILIES[family][1:]
    out = tmp_path / "budget"
    assert (
        main(["export", "--model", str(checkpoint), "--device", "host", "--visual-tokens", str(n), "--out", str(out)])
        == 0
    )
    pipe = edgemfm.load(out)
    media = pipe.manifest.prompt.media["image"]
    assert media.visual_tokens == n and "visual tokens" in pipe.manifest.report.notes["vision_encoder"]
    calls = pipe.prepare({"image": [picture]})["image"][0].calls
    rows = [pipe.encode("image", call).shape[1] for call in calls]
    # pooling gives exactly N; Qwen2-VL's resize keeps the aspect ratio in whole 8 px rows: 24x32 px, 12 rows
    assert n // 2 < max(rows) <= n < full and (family == "qwen2_vl" or max(rows) == n)
    tokens = list(pipe.generate_tokens("Describe the picture.", images=[picture], max_new_tokens=6))
    assert 0 < len(tokens) <= 6


def test_the_demo_encoder_pools_its_four_rows_to_two(tmp_path, picture):
    out = edgemfm.export(
        edgemfm.ExportConfig(model=tiny_demo(tmp_path / "tiny-demo"), out=tmp_path / "demo", visual_tokens=2)
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["prompt"]["media"]["image"]["visual_tokens"] == 2
    pipe = edgemfm.load(out)
    assert pipe.encode("image", picture).shape == (1, 2, 96)
    ids = pipe.prompt_ids("What is it?", {"image": 1})
    assert pipe.embed(ids, {"image": [picture]}).shape == (1, len(ids) - 1 + 2, 96)
    assert np.isfinite(pipe.encode("image", picture)).all()


@pytest.mark.slow
def test_a_demo_pooled_to_one_by_two_before_its_projector_exports_two_rows_and_answers(tmp_path, picture):
    from edgemfm.exporters import demo

    model = tiny_demo(tmp_path / "tiny-demo", grid=[1, 2])
    pipe = edgemfm.load(edgemfm.export(edgemfm.ExportConfig(model=model, out=tmp_path / "demo")))
    assert pipe.encode("image", picture).shape == (1, 2, 96)
    ids = pipe.prompt_ids("What is it?", {"image": 1})
    assert pipe.embed(ids, {"image": [picture]}).shape == (1, len(ids) - 1 + 2, 96)
    assert 0 < len(list(pipe.generate_tokens("What is it?", images=[picture], max_new_tokens=3))) <= 3
    assert demo.media_rows(model, "image", (224, [1, 2])) == 2
    split = demo.split(demo.load(model), model)  # its budget pools the 1x2 grid, not a square one
    one, note = demo.visual_tokens(split, 1, "edgemfm-demo")
    assert one.units["vision_encoder"].module(torch.zeros(1, 3, 224, 224)).shape == (1, 1, 96) and "1x2 grid" in note
    with pytest.raises(InputError, match="--visual-tokens 4 is not available for edgemfm-demo; allowed: 1, 2$"):
        demo.visual_tokens(split, 4, "edgemfm-demo")


@pytest.mark.parametrize("grid", [[1, 9], [2, 2, 1], "2", 0])
def test_a_bad_demo_grid_is_refused_in_one_line(grid, tmp_path, capsys):
    model = tiny_demo(tmp_path / "tiny-demo")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "vision_grid": grid}))
    assert main(["export", "--model", str(model), "--device", "host", "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"vision_grid {grid!r} is not available; allowed: an int n (n x n) or a pair [rows, columns]" in err
    assert "\n" not in err and not (tmp_path / "never").exists()
