"""export --draft-vocab: a draft's head over a vocabulary subset, and speculative decoding with it."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

import edgemfm
from edgemfm import bundle
from edgemfm.bundle import read_manifest
from edgemfm.cli import main
from edgemfm.errors import InputError
from edgemfm.exporters.draft_vocab import choose_ids, restrict_head

PROMPT = "Describe the picture."
SIZE = 96  # of the placeholder's ~260 byte-level tokens


@pytest.fixture(scope="module")
def int4_subset(tmp_path_factory, placeholder_model):
    """The placeholder model exported at int4 with its head (MatMulNBits on the shared table) cut to SIZE tokens."""
    out = tmp_path_factory.mktemp("bundles") / "subset-int4"
    config = edgemfm.ExportConfig(model=placeholder_model, device="host", out=out, precision="int4", draft_vocab=SIZE)
    return edgemfm.export(config)


@pytest.fixture(scope="module")
def fp32_subset(tmp_path_factory, default_bundle):
    """The default (fp32) bundle with its head (FusedMatMul on the shared table) cut by the step export runs last."""
    stage = tmp_path_factory.mktemp("bundles") / "subset-fp32"
    shutil.copytree(default_bundle, stage, dirs_exist_ok=True)
    bundle.seal(stage, restrict_head(stage, read_manifest(default_bundle), SIZE))
    return stage


@pytest.fixture(params=["fp32", "int4"])
def subset_bundle(request):
    return request.getfixturevalue(f"{request.param}_subset")


def test_the_subset_is_the_lowest_ids_and_the_end_tokens():
    assert choose_ids(10, 4, keep=(9, 2)) == (0, 1, 2, 3, 9)
    with pytest.raises(InputError, match=r"draft vocab 10 is not allowed; allowed: 1 to 9"):
        choose_ids(10, 10, keep=())


@pytest.mark.parametrize(
    "kwargs, message",
    [({"draft_vocab": 0}, "at least 1"), ({"draft_vocab": 8, "format": "pte"}, "allowed: onnx")],
)
def test_bad_draft_vocab_options_are_named(kwargs, message):
    with pytest.raises(InputError, match=message):
        edgemfm.ExportConfig(device="host", **kwargs)


def test_the_head_scores_only_the_subset_and_the_manifest_names_it(subset_bundle):
    manifest = read_manifest(subset_bundle)
    subset = manifest.generation.head_subset
    eos = manifest.tokenizer.eos_token_ids
    assert subset.ids == tuple(sorted(set(range(SIZE)) | set(eos))) and subset.vocab_size > SIZE
    decoder = onnx.load(str(subset_bundle / manifest.components["text_decoder"].file), load_external_data=False)
    head = next(n for n in decoder.graph.node if "logits" in n.output)
    if head.op_type == "MatMulNBits":
        assert next(a.i for a in head.attribute if a.name == "N") == len(subset.ids)
    logits = next(o for o in manifest.components["text_decoder"].outputs if o.name == "logits")
    assert logits.shape[-1] in (len(subset.ids), "vocab")


def test_a_subset_head_gives_the_whole_heads_logits_on_its_tokens(default_bundle, fp32_subset, picture):
    whole = [row for _, row in edgemfm.load(default_bundle).generate_steps(PROMPT, [picture], max_new_tokens=6)]
    cut = edgemfm.load(fp32_subset)
    ids = np.asarray(cut.manifest.generation.head_subset.ids)
    forced = list(cut.generate_steps(PROMPT, [picture], max_new_tokens=6))
    for (token, row), full in zip(forced, whole):
        assert token in ids and np.isneginf(np.delete(row, ids)).all()
        np.testing.assert_allclose(row[ids], full[ids], atol=1e-4)
        if full.argmax() in ids:  # the same choice wherever the whole head's choice is in the subset
            assert token == full.argmax()
        else:
            break  # the answers part here: the rows after it see other tokens


def test_speculative_decoding_with_a_subset_draft_gives_the_targets_tokens(default_bundle, subset_bundle, picture):
    alone = list(edgemfm.load(default_bundle).generate_tokens(PROMPT, images=[picture], max_new_tokens=24))
    pipe = edgemfm.load(default_bundle, draft=subset_bundle, draft_k=3)
    assert list(pipe.generate_tokens(PROMPT, images=[picture], max_new_tokens=24)) == alone
    assert pipe.speculation["proposed"] > 0


def test_cli_refuses_a_draft_vocab_below_one(capsys):
    assert main(["export", "--device", "host", "--draft-vocab", "0", "--dry-run"]) == 2
    assert "Traceback" not in capsys.readouterr().err
