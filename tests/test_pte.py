"""ExecuTorch (.pte) bundles over a table of families: one program with a named method per
component, each method against PyTorch, greedy generation token for token against transformers.

A family joins with one `Case` row: how to build its tiny checkpoint, the media its prompt
takes, and how transformers `generate` answers the same prompt.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

import edgemfm
from edgemfm.bundle import read_manifest
from edgemfm.cli import main
from edgemfm.errors import InputError
from tiny_models import tiny_llava

MAX_SEQ_LEN = 96  # small: the test programs' cache; the profile's (1024 for pi5) in real bundles
PROMPT = "Describe the picture."


def llava_generate(checkpoint: Path, pipe, prompt: str, images: list[Path], max_new_tokens: int) -> list[int]:
    """transformers' greedy answer, from the prompt ids the pipeline builds (one row per image patch)."""
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    kwargs = {"pixel_values": processor([Image.open(p) for p in images], return_tensors="pt")["pixel_values"]} if images else {}
    vision = model.config.vision_config
    rows = (vision.image_size // vision.patch_size) ** 2  # patches, CLS dropped by the default feature selection
    token = model.config.image_token_id
    ids = [t for i in pipe.prompt_ids(prompt, {"image": len(images)}) for t in ([i] * rows if i == token else [i])]
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    return [t for t in out[0, len(ids) :].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]


@dataclass(frozen=True)
class Case:
    family: str
    build: Callable[[Path], Path]  # writes the tiny checkpoint at the path
    methods: tuple[str, ...]  # the program's methods: one per component
    media: str  # the generate_tokens keyword its prompt's one media item goes to ("images"; an audio row adds its clip fixture)
    generate: Callable[..., list[int]]  # (checkpoint, pipe, prompt, media items, max_new_tokens) -> transformers' tokens


CASES = [
    Case("llava", tiny_llava, ("vision_encoder", "token_embedding", "text_decoder"), "images", llava_generate),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.family)
def case(request):
    return request.param


@pytest.fixture(scope="module")
def checkpoint(case, tmp_path_factory):
    return case.build(tmp_path_factory.mktemp("models") / f"tiny-{case.family}")


@pytest.fixture(scope="module")
def bundle(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "pte"
    argv = ["export", "--model", str(checkpoint), "--device", "pi5", "--format", "pte", "--max-seq-len", str(MAX_SEQ_LEN), "--out", str(out)]
    assert main(argv) == 0
    return out


def test_one_program_with_a_method_per_component(case, bundle):
    from executorch.runtime import Runtime

    manifest = read_manifest(bundle)
    programs = [name for name in manifest.files if name.endswith(".pte")]
    assert len(programs) == 1 and not [n for n in manifest.files if n.endswith(".onnx")]
    assert Runtime.get().load_program(bundle / programs[0]).method_names == set(case.methods)
    assert {c.method for c in manifest.components.values()} == set(case.methods) == set(manifest.components)
    assert all(c.file == programs[0] and c.format == "pte" for c in manifest.components.values())
    kv = manifest.components["text_decoder"].kv_cache
    assert (kv.kind, kv.max_seq_len, kv.position) == ("static", MAX_SEQ_LEN, "input_pos")
    assert manifest.streaming.max_seq_len == MAX_SEQ_LEN


def test_delegation_is_reported_per_method(case, bundle, capsys):
    report = read_manifest(bundle).report["delegation"]
    assert set(report) == set(case.methods)
    for name, d in report.items():
        assert d["backend"] == "XnnpackBackend"
        assert sum(d["non_delegated_ops"].values()) == d["non_delegated_nodes"], name
    # the matrix multiplications of the encoder and the decoder run in XNNPACK
    assert report["text_decoder"]["delegated_nodes"] > 0 and report["text_decoder"]["subgraphs"] > 0
    assert report["vision_encoder"]["delegated_nodes"] > 0


def _fresh(t: torch.Tensor, axes: dict[int, str], length: int) -> torch.Tensor:
    """An input like the example `t`, with its dynamic (non-item) axes at `length`."""
    shape = [length if d in axes and axes[d] not in ("batch", "images") else n for d, n in enumerate(t.shape)]
    return torch.randn(shape) if t.is_floating_point() else torch.randint(0, int(t.max()) + 1, shape)


def test_every_method_matches_pytorch(checkpoint, bundle):
    """Each method on new shapes against the PyTorch component; the decoder over a prefill and a step."""
    from executorch.runtime import Runtime

    from edgemfm.exporters import find_family
    from edgemfm.exporters.decoder import TextDecoder

    manifest = read_manifest(bundle)
    family = find_family(json.loads((checkpoint / "config.json").read_text()))
    units = family.split(family.load(checkpoint), checkpoint).units
    program = Runtime.get().load_program(bundle / manifest.components["text_decoder"].file)
    torch.manual_seed(1)
    for name, unit in units.items():
        method = program.load_method(manifest.components[name].method)
        if unit.kv_cache is None:
            args = [_fresh(t, unit.dynamic_axes.get(n, {}), 7) for n, t in zip(unit.input_names, unit.args)]
            with torch.no_grad():
                expected = unit.module(*args)
            got = method.execute(args)[0]
        else:
            assert isinstance(unit.module, TextDecoder)
            kv = unit.kv_cache
            x = torch.randn(1, 8, unit.args[0].shape[-1])
            empty = tuple(torch.zeros(1, kv.kv_heads, 0, kv.head_dim) for _ in range(2 * kv.layers))
            with torch.no_grad():  # the whole sequence at once through the dynamic-cache decoder
                expected = unit.module(x, torch.ones(1, 8, dtype=torch.int64), torch.arange(8)[None], empty)[0]
            prefill = method.execute([x[:, :7], torch.arange(7)])[0]
            step = method.execute([x[:, 7:], torch.tensor([7])])[0]
            got = torch.cat([prefill, step], dim=1)
        scale = max(1.0, float(expected.abs().max()))
        assert got.shape == expected.shape, name
        assert float((got - expected).abs().max()) <= family.tolerance * scale, name


def test_greedy_generation_matches_transformers(case, checkpoint, bundle, picture):
    pipe = edgemfm.load(bundle)
    ours = list(pipe.generate_tokens(PROMPT, **{case.media: [picture]}, max_new_tokens=24))
    assert len(ours) >= 12 and len(set(ours)) > 4  # a real sequence, not an immediate stop or one repeated token
    assert ours == case.generate(checkpoint, pipe, PROMPT, [picture], 24)


def test_text_only_generation_matches_transformers(case, checkpoint, bundle):
    pipe = edgemfm.load(bundle)
    assert list(pipe.generate_tokens("Hello there", max_new_tokens=16)) == case.generate(checkpoint, pipe, "Hello there", [], 16)


def test_an_answer_that_outgrows_the_cache_is_refused_at_the_full_cache(bundle):
    pipe = edgemfm.load(bundle)
    prompt = len(pipe.prompt_ids("Hello there"))
    tokens = []
    with pytest.raises(InputError, match=f"need {MAX_SEQ_LEN + 1} positions; this bundle's static KV cache holds {MAX_SEQ_LEN}"):
        for token in pipe.generate_tokens("Hello there", max_new_tokens=10 * MAX_SEQ_LEN):
            tokens.append(token)
    # the last token comes from the logits at the last position the cache holds (no eos on the way there)
    assert len(tokens) == MAX_SEQ_LEN - prompt + 1


@pytest.mark.parametrize("extra", [1, MAX_SEQ_LEN])  # past the cache; past the embedding's planned input too
def test_a_prompt_longer_than_the_cache_is_refused_in_one_line(bundle, extra, capsys):
    pipe = edgemfm.load(bundle)
    with pytest.raises(InputError, match="--max-seq-len"):
        list(pipe.generate_tokens("x" * (MAX_SEQ_LEN + extra - len(pipe.prompt_ids("")))))
    assert main(["run", str(bundle), "--prompt", "x" * (MAX_SEQ_LEN + extra)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the "running on" note
    assert line.startswith("edgemfm: error: ") and "--max-seq-len" in line


@pytest.mark.slow
def test_tokens_equal_the_onnx_bundle(case, checkpoint, bundle, picture, tmp_path):
    onnx = edgemfm.export(checkpoint, device="pi5", out=tmp_path / "onnx", progress=False)
    media = {case.media: [picture]}
    assert list(edgemfm.load(bundle).generate_tokens(PROMPT, **media, max_new_tokens=24)) == list(
        edgemfm.load(onnx).generate_tokens(PROMPT, **media, max_new_tokens=24)
    )


@pytest.mark.slow
def test_default_model_pte_equals_onnx_and_transformers(default_bundle, picture, tmp_path):
    """The built-in default model at the host profile's own max_seq_len (2048)."""
    from edgemfm.exporters import default_model

    pte = edgemfm.export(device="host", format="pte", out=tmp_path / "pte", progress=False)
    manifest = read_manifest(pte)
    assert manifest.components["text_decoder"].kv_cache.max_seq_len == edgemfm.load_profile("host").streaming.max_seq_len
    pipe = edgemfm.load(pte)
    ours = list(pipe.generate_tokens(PROMPT, images=[picture], max_new_tokens=24))
    assert len(ours) >= 12 and ours == list(edgemfm.load(default_bundle).generate_tokens(PROMPT, images=[picture], max_new_tokens=24))
    checkpoint = default_model.build(tmp_path / "default-model")
    assert ours == llava_generate(checkpoint, pipe, PROMPT, [picture], 24)
