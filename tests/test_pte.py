"""ExecuTorch (.pte) bundles over a table of families: one program with a named method per
component, each method against PyTorch, greedy generation token for token against transformers.

A family joins with one `Case` row: how to build its tiny checkpoint, the media its prompt
takes, and how transformers `generate` answers the same prompt. Exporting and lowering to
XNNPACK takes one to four minutes a family on 2 loaded cores, so the default suite exports
LLaVA only and every other row runs with -m slow (each exported once per module and shared by
its tests); the default suite checks every static-decoder kind in PyTorch (at the end).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_audio import tiny_qwen2_audio, tiny_whisper
from tiny_models import tiny_idefics3, tiny_llava, tiny_qwen2_vl
from tiny_text import TEXT_CONFIGS, tiny_text_model

import edgemfm
from edgemfm.bundle import read_manifest
from edgemfm.cli import main
from edgemfm.errors import InputError

MAX_SEQ_LEN = 96  # small: the test programs' cache; the profile's (1024 for pi5) in real bundles
PROMPT = "Describe the picture."
IDEFICS3_ROWS_PER_TILE = 4  # tests/tiny_models.py: (30 px / 5 px patches)^2 / 3^2


def _answer(pipe, model, ids: list[int], max_new_tokens: int, **inputs) -> list[int]:
    """transformers' greedy tokens after the prompt `ids`, EOS dropped as the pipeline does."""
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, **inputs)
    return [t for t in out[0, len(ids) :].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]


def _expand(ids: list[int], token: int, rows: list[int]) -> list[int]:
    """`ids` with each `token` repeated as many times as its media item has decoder rows."""
    counts = iter(rows)
    return [t for i in ids for t in ([i] * next(counts) if i == token else [i])]


def llava_generate(checkpoint: Path, pipe, prompt: str, images: list[Path], max_new_tokens: int) -> list[int]:
    """transformers' greedy answer, from the prompt ids the pipeline builds (one row per image patch)."""
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    kwargs = (
        {"pixel_values": processor([Image.open(p) for p in images], return_tensors="pt")["pixel_values"]}
        if images
        else {}
    )
    vision = model.config.vision_config
    rows = (vision.image_size // vision.patch_size) ** 2  # patches, CLS dropped by the default feature selection
    ids = _expand(pipe.prompt_ids(prompt, {"image": len(images)}), model.config.image_token_id, [rows] * len(images))
    return _answer(pipe, model, ids, max_new_tokens, **kwargs)


def text_generate(checkpoint: Path, pipe, prompt: str, media: list, max_new_tokens: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    assert not media, "a decoder-only model takes text only"
    return _answer(
        pipe, AutoModelForCausalLM.from_pretrained(checkpoint).eval(), pipe.prompt_ids(prompt), max_new_tokens
    )


def qwen2_audio_generate(checkpoint: Path, pipe, prompt: str, clips: list[Path], max_new_tokens: int) -> list[int]:
    """As Qwen2AudioProcessor: the audio token repeated once per encoder row of the clip."""
    from transformers import Qwen2AudioForConditionalGeneration, WhisperFeatureExtractor

    from edgemfm.runtimes.audio import load_audio

    model = Qwen2AudioForConditionalGeneration.from_pretrained(checkpoint).eval()
    inputs, rows = {}, []
    if clips:
        samples = [load_audio(c, pipe.manifest.preprocess.audio) for c in clips]
        fe = WhisperFeatureExtractor.from_pretrained(checkpoint)(
            samples, sampling_rate=16000, return_tensors="pt", return_attention_mask=True, padding="max_length"
        )
        inputs = {"input_features": fe.input_features, "feature_attention_mask": fe.attention_mask}
        rows = [(((int(f) - 1) // 2 + 1) - 2) // 2 + 1 for f in fe.attention_mask.sum(-1)]
    ids = _expand(pipe.prompt_ids(prompt, {"audio": len(clips)}), model.config.audio_token_id, rows)
    return _answer(pipe, model, ids, max_new_tokens, **inputs)


def idefics3_generate(checkpoint: Path, pipe, prompt: str, images: list[Path], max_new_tokens: int) -> list[int]:
    """The pipeline's prompt (equal to Idefics3Processor's, tests/test_idefics3.py), tiles expanded to their rows."""
    from transformers import AutoModelForImageTextToText, Idefics3Processor

    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    ids = pipe.prompt_ids(prompt, pipe.prepare({"image": images}))
    token = pipe.manifest.prompt.media["image"].token_id
    ids = _expand(ids, token, [IDEFICS3_ROWS_PER_TILE] * ids.count(token))
    processor = Idefics3Processor.from_pretrained(checkpoint).image_processor
    inputs = processor([Image.open(p) for p in images], return_tensors="pt") if images else {}
    return _answer(pipe, model, ids, max_new_tokens, **inputs)


def qwen2_vl_generate(checkpoint: Path, pipe, prompt: str, images: list[Path], max_new_tokens: int) -> list[int]:
    """The image pad token repeated once per merged patch, M-RoPE positions from transformers' own get_rope_index."""
    from transformers import AutoModelForImageTextToText, Qwen2VLImageProcessorPil

    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    media = pipe.prepare({"image": images})
    token = pipe.manifest.prompt.media["image"].token_id
    ids = _expand(
        pipe.prompt_ids(prompt, media),
        token,
        [t * h * w for p in media.get("image", []) for t, h, w in (c.grid for c in p.calls)],
    )
    input_ids = torch.tensor([ids])
    inputs = {"attention_mask": torch.ones_like(input_ids)}
    if images:
        processor = Qwen2VLImageProcessorPil.from_pretrained(checkpoint)
        inputs |= {
            **processor(images=[Image.open(p) for p in images], return_tensors="pt"),
            "mm_token_type_ids": (input_ids == token).int(),
        }
    return _answer(pipe, model, ids, max_new_tokens, **inputs)


def whisper_generate(checkpoint: Path, pipe, prompt: str, clips: list[Path], max_new_tokens: int) -> list[int]:
    """A transcription: transformers starts from the decoder start tokens as the bundle's prompt does."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from edgemfm.runtimes.audio import load_audio

    assert prompt == "" and len(clips) == 1, "Whisper transcribes one clip, with no text prompt"
    samples = load_audio(clips[0], pipe.manifest.preprocess.audio)
    features = WhisperFeatureExtractor.from_pretrained(checkpoint)(
        samples, sampling_rate=16000, return_tensors="pt"
    ).input_features
    model = WhisperForConditionalGeneration.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        out = model.generate(input_features=features, max_new_tokens=max_new_tokens, do_sample=False)
    return [t for t in out[0].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]


@dataclass(frozen=True)
class Case:
    family: str
    build: Callable[[Path], Path]  # writes the tiny checkpoint at the path
    methods: tuple[str, ...]  # the program's methods: one per component
    media: str | None  # the generate_tokens keyword its prompt's one media item goes to; None: text only
    generate: Callable[
        ..., list[int]
    ]  # (checkpoint, pipe, prompt, media items, max_new_tokens) -> transformers' tokens
    max_seq_len: int = MAX_SEQ_LEN  # room for the prompt, its media rows and 24 answer tokens
    prompt: str = PROMPT  # "" for Whisper: it transcribes
    text_only: bool = True  # whether it answers a prompt without media (Whisper needs its clip)


TEXT_METHODS = ("token_embedding", "text_decoder")
VISION_METHODS = ("vision_encoder", *TEXT_METHODS)
CASES = [
    # 2 decoder layers, not tiny_llava's 3: a third repeats the second's cache slots, and lowering, most of the
    # default suite's one pte export here, grows with the layers
    Case("llava", lambda p: tiny_llava(p, text={"num_hidden_layers": 2}), VISION_METHODS, "images", llava_generate),
    *(
        pytest.param(
            Case(a, lambda p, a=a: tiny_text_model(a, p), TEXT_METHODS, None, text_generate),
            marks=pytest.mark.slow,
            id=a,
        )
        for a in TEXT_CONFIGS
    ),
    pytest.param(
        Case("qwen2_audio", tiny_qwen2_audio, ("audio_encoder", *TEXT_METHODS), "audio", qwen2_audio_generate, 192),
        marks=pytest.mark.slow,
        id="qwen2_audio",
    ),
    pytest.param(
        Case("idefics3", tiny_idefics3, VISION_METHODS, "images", idefics3_generate, 192),
        marks=pytest.mark.slow,
        id="idefics3",
    ),
    pytest.param(
        # seed 1: seed 0 ends its answer after 6 tokens
        Case("qwen2_vl", lambda p: tiny_qwen2_vl(p, seed=1), VISION_METHODS, "images", qwen2_vl_generate, 160),
        marks=pytest.mark.slow,
        id="qwen2_vl",
    ),
    pytest.param(
        Case(
            "qwen2_5_vl",
            lambda p: tiny_qwen2_vl(p, seed=1, version="2.5"),
            VISION_METHODS,
            "images",
            qwen2_vl_generate,
            160,
        ),
        marks=pytest.mark.slow,
        id="qwen2_5_vl",
    ),
    pytest.param(
        Case("smolvlm", lambda p: tiny_idefics3(p, kind="smolvlm"), VISION_METHODS, "images", idefics3_generate, 192),
        marks=pytest.mark.slow,
        id="smolvlm",
    ),
    pytest.param(
        Case(
            "whisper",
            tiny_whisper,
            ("audio_encoder", *TEXT_METHODS),
            "audio",
            whisper_generate,
            prompt="",
            text_only=False,
        ),
        marks=pytest.mark.slow,
        id="whisper",
    ),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.family)
def case(request):
    return request.param


@pytest.fixture(scope="module")
def checkpoint(case, tmp_path_factory):
    return case.build(tmp_path_factory.mktemp("models") / f"tiny-{case.family}")


@pytest.fixture(scope="module")
def bundle(case, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "pte"
    argv = [
        "export",
        "--model",
        str(checkpoint),
        "--device",
        "pi5",
        "--format",
        "pte",
        "--max-seq-len",
        str(case.max_seq_len),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def media_item(case, request):
    """The one media item of the family's prompt: the shapes picture or a spoken sentence."""
    if case.media is None:
        return None
    if case.media == "audio":
        from test_audio import speech_wav

        return speech_wav(
            request.getfixturevalue("tmp_path_factory").mktemp("audio") / "speech.wav", "It will rain in the afternoon."
        )
    return request.getfixturevalue("picture")


def test_one_program_with_a_method_per_component(case, bundle):
    from executorch.runtime import Runtime

    manifest = read_manifest(bundle)
    programs = [name for name in manifest.files if name.endswith(".pte")]
    assert len(programs) == 1 and not [n for n in manifest.files if n.endswith(".onnx")]
    assert Runtime.get().load_program(bundle / programs[0]).method_names == set(case.methods)
    assert {c.method for c in manifest.components.values()} == set(case.methods) == set(manifest.components)
    assert all(c.file == programs[0] and c.format == "pte" for c in manifest.components.values())
    kv = manifest.components["text_decoder"].kv_cache
    assert (kv.kind, kv.max_seq_len, kv.position) == ("static", case.max_seq_len, "input_pos")
    assert manifest.streaming.max_seq_len == case.max_seq_len


def test_delegation_is_reported_per_method(case, bundle, capsys):
    report = read_manifest(bundle).report.delegation
    assert set(report) == set(case.methods)
    for name, d in report.items():
        assert d.backend == "XnnpackBackend"
        assert sum(d.non_delegated_ops.values()) == d.non_delegated_nodes, name
        # the matrix multiplications of the encoders and the decoder run in XNNPACK
        if name != "token_embedding":
            assert d.delegated_nodes > 0 and d.subgraphs > 0, name


def _fresh(t: torch.Tensor, axes: dict[int, str], length: int) -> torch.Tensor:
    """An input like the example `t`, with its dynamic (non-item) axes at `length`."""
    from edgemfm.exporters.executorch import ONE_ITEM

    shape = [length if d in axes and axes[d] not in ONE_ITEM else n for d, n in enumerate(t.shape)]
    # integers from the upper half of the example's range: Qwen2-Audio's frame count then leaves rows
    return torch.randn(shape) if t.is_floating_point() else torch.randint(int(t.max()) // 2, int(t.max()) + 1, shape)


def test_every_method_matches_pytorch(checkpoint, bundle):
    methods_match_pytorch(checkpoint, bundle)


def methods_match_pytorch(checkpoint: Path, bundle: Path) -> None:
    """Each method on new shapes against the PyTorch component; the decoder over a prefill and a step."""
    from executorch.runtime import Runtime

    from edgemfm.exporters import find_family

    manifest = read_manifest(bundle)
    family = find_family(json.loads((checkpoint / "config.json").read_text()))
    units = family.split(family.load(checkpoint), checkpoint).units
    program = Runtime.get().load_program(bundle / manifest.components["text_decoder"].file)
    torch.manual_seed(1)
    for name, unit in units.items():
        method = program.load_method(manifest.components[name].method)
        if unit.kv_cache is None:
            # 8: a whole number of Qwen2-VL's 2x2 merged patches
            args = [_fresh(t, unit.dynamic_axes.get(n, {}), 8) for n, t in zip(unit.input_names, unit.args)]
            with torch.no_grad():
                expected = unit.module(*args)
            expected = (
                list(expected) if isinstance(expected, tuple) else [expected]
            )  # Whisper's encoder: every layer's K/V
            got = method.execute(args)
        else:
            kv = unit.kv_cache
            cross = unit.args[4] if unit.cross_attention else ()  # Whisper: each layer's cross-attention K/V
            x = torch.randn(1, 8, unit.args[0].shape[-1])
            empty = tuple(torch.zeros(1, kv.kv_heads, 0, kv.head_dim) for _ in range(2 * kv.layers))
            mrope = unit.args[2].dim() == 3  # Qwen2-VL: [3, 1, seq] rotary positions beside the cache slots
            # M-RoPE: three different rows, as after an image, unlike the slots
            positions = (
                (torch.arange(8) + torch.tensor([0, 2, 5])[:, None])[:, None] if mrope else torch.arange(8)[None]
            )
            with torch.no_grad():  # the whole sequence at once through the dynamic-cache decoder
                expected = unit.module(
                    x, torch.ones(1, 8, dtype=torch.int64), positions, empty, *([cross] if cross else [])
                )[0]
            rotary = ([positions[..., :7].contiguous()], [positions[..., 7:].contiguous()]) if mrope else ([], [])
            prefill = method.execute([x[:, :7], torch.arange(7), *rotary[0], *cross])[0]
            step = method.execute([x[:, 7:], torch.tensor([7]), *rotary[1], *cross])[0]
            got, expected = [torch.cat([prefill, step], dim=1)], [expected]
        assert len(got) == len(expected), name
        for g, e in zip(got, expected):
            assert g.shape == e.shape and e.numel(), name
            assert float((g - e).abs().max()) <= family.tolerance * max(1.0, float(e.abs().max())), name


def test_greedy_generation_matches_transformers(case, checkpoint, bundle, media_item):
    """With the family's media item in the prompt (text only for decoder-only models)."""
    pipe = edgemfm.load(bundle)
    items = [] if media_item is None else [media_item]
    ours = list(pipe.generate_tokens(case.prompt, **({case.media: items} if items else {}), max_new_tokens=24))
    assert len(ours) >= 12 and len(set(ours)) > 4  # a real sequence, not an immediate stop or one repeated token
    assert ours == case.generate(checkpoint, pipe, case.prompt, items, 24)


def test_text_only_generation_matches_transformers(case, checkpoint, bundle):
    if case.media is None or not case.text_only:
        pytest.skip("a decoder-only model (the test above is its text-only test) or a transcriber (it needs its clip)")
    pipe = edgemfm.load(bundle)
    assert list(pipe.generate_tokens("Hello there", max_new_tokens=16)) == case.generate(
        checkpoint, pipe, "Hello there", [], 16
    )


def _runtime_check(case: Case) -> None:
    if case.family != "llava":
        pytest.skip("the runtime's static-cache bounds, family-independent: checked on the llava program")


def test_an_answer_that_outgrows_the_cache_slides_and_goes_on(case, bundle):
    """The static cache keeps its sink entries and the most recent ones by feeding them again
    (runtimes/static_cache.py; exactness in tests/test_pte_sliding.py)."""
    _runtime_check(case)
    pipe = edgemfm.load(bundle)
    prompt = len(pipe.prompt_ids("Hello there"))
    tokens = list(pipe.generate_tokens("Hello there", max_new_tokens=2 * MAX_SEQ_LEN))
    assert len(tokens) > MAX_SEQ_LEN - prompt + 1  # past the last position the cache holds
    assert pipe.stats().decoder_positions > prompt + len(tokens)  # the kept rows, fed again, count


@pytest.mark.parametrize("extra", [1, MAX_SEQ_LEN])  # past the cache; past the embedding's planned input too
def test_a_prompt_longer_than_the_cache_is_refused_in_one_line(case, bundle, extra, capsys):
    _runtime_check(case)
    pipe = edgemfm.load(bundle)
    with pytest.raises(InputError, match="--max-seq-len"):
        list(pipe.generate_tokens("x" * (MAX_SEQ_LEN + extra - len(pipe.prompt_ids("")))))
    assert main(["run", str(bundle), "--prompt", "x" * (MAX_SEQ_LEN + extra)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the "running on" note
    assert line.startswith("edgemfm: error: ") and "--max-seq-len" in line


@pytest.mark.slow
def test_tokens_equal_the_onnx_bundle(case, checkpoint, bundle, media_item, tmp_path):
    onnx = edgemfm.export(edgemfm.ExportConfig(model=checkpoint, device="pi5", out=tmp_path / "onnx"))
    media = {} if media_item is None else {case.media: [media_item]}
    assert list(edgemfm.load(bundle).generate_tokens(case.prompt, **media, max_new_tokens=24)) == list(
        edgemfm.load(onnx).generate_tokens(case.prompt, **media, max_new_tokens=24)
    )


@pytest.mark.slow
def test_the_default_bundles_model_as_pte_at_the_hosts_max_seq_len_equals_onnx_and_transformers(
    placeholder_model, default_bundle, picture, tmp_path
):
    """The model behind `default_bundle` (the placeholder: the demo model, `export`'s own default, has
    tests/test_pte_demo.py) at the host profile's own max_seq_len (2048)."""
    pte = edgemfm.export(
        edgemfm.ExportConfig(model=placeholder_model, device="host", format="pte", out=tmp_path / "pte")
    )
    manifest = read_manifest(pte)
    assert (
        manifest.components["text_decoder"].kv_cache.max_seq_len == edgemfm.load_profile("host").streaming.max_seq_len
    )
    pipe = edgemfm.load(pte)
    ours = list(pipe.generate_tokens(PROMPT, images=[picture], max_new_tokens=24))
    assert len(ours) >= 12 and ours == list(
        edgemfm.load(default_bundle).generate_tokens(PROMPT, images=[picture], max_new_tokens=24)
    )
    assert ours == llava_generate(placeholder_model, pipe, PROMPT, [picture], 24)


# Fast checks of the static-cache decoder in PyTorch (no lowering): what the slow rows above
# then check through ExecuTorch for every family.
@pytest.mark.parametrize("family", ["LlamaForCausalLM", "Gemma2ForCausalLM", "qwen2_vl", "whisper"])
def test_static_decoder_equals_the_dynamic_one_in_steps(family, tmp_path):
    """Gemma-2 past its sliding window (soft-capping included); Qwen2-VL with M-RoPE rows that
    differ from the slots; Whisper with its cross-attention K/V fed at every call."""
    from edgemfm.exporters import find_family

    builders = {"qwen2_vl": lambda p: tiny_qwen2_vl(p, seed=1), "whisper": tiny_whisper}
    path = builders.get(family, lambda p: tiny_text_model(family, p))(tmp_path / "m")
    fam = find_family(json.loads((path / "config.json").read_text()))
    decoder = fam.split(fam.load(path), path).units["text_decoder"]
    static = decoder.static_cache(32)
    kv, mrope = decoder.kv_cache, family == "qwen2_vl"
    torch.manual_seed(2)
    x = torch.randn(1, 12, decoder.args[0].shape[-1])
    positions = (torch.arange(12) + torch.tensor([0, 2, 5])[:, None])[:, None] if mrope else torch.arange(12)[None]
    empty = tuple(torch.zeros(1, kv.kv_heads, 0, kv.head_dim) for _ in range(2 * kv.layers))
    cross = (decoder.args[4],) if decoder.cross_attention else ()
    with torch.no_grad():
        expected = decoder.module(x, torch.ones(1, 12, dtype=torch.int64), positions, empty, *cross)[0]
        calls = [(0, 9), (9, 10), (10, 11), (11, 12)]  # a prefill longer than the window of 6, then single steps
        got = torch.cat(
            [
                static.module(x[:, a:b], torch.arange(a, b), *([positions[..., a:b]] if mrope else cross))
                for a, b in calls
            ],
            dim=1,
        )
    assert static.input_names[:2] == ("inputs_embeds", "input_pos") and static.kv_cache.kind == "static"
    assert float((got - expected).abs().max()) <= 1e-5 * max(1.0, float(expected.abs().max()))


def test_tanh_gelu_keeps_its_approximation_in_xnnpack(tmp_path):
    """executorch 1.5.1's XNNPACK runs GELU(approximate="tanh") as exact GELU (4.7e-4 off) unless spelled out."""
    from edgemfm.exporters.executorch import write_units
    from edgemfm.exporters.family import ExportUnit

    unit = ExportUnit(
        module=torch.nn.GELU(approximate="tanh"),
        args=(torch.linspace(-6, 6, 4001)[None],),
        input_names=("x",),
        output_names=("y",),
        dynamic_axes={},
    )
    _, parity, delegation = write_units({"gelu": unit}, tmp_path, 1e-6, lambda _: None, max_seq_len=8)
    assert parity["gelu"].max_abs_diff <= 1e-5  # the erf form differs from the tanh form by up to 4.7e-4 in [-6, 6]
    assert delegation["gelu"].delegated_nodes > 0 and delegation["gelu"].non_delegated_nodes == 1  # getitem


class _CrossAttention(torch.nn.Module):
    """Whisper's cross-attention as transformers calls it: SDPA over given keys and values, no mask."""

    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def test_unmasked_attention_runs_in_xnnpack_without_torchs_safe_softmax(tmp_path):
    """torch's SDPA decomposition scaled K too, copied Q and K to broadcast them and wrapped the softmax in
    eq/any/logical_not/where over the whole score matrix, all portable: 55% of a real tiny.en encoder window."""
    from edgemfm.exporters.executorch import write_units
    from edgemfm.exporters.family import ExportUnit

    torch.manual_seed(0)
    unit = ExportUnit(
        module=_CrossAttention(),
        args=(torch.randn(1, 6, 3, 64), torch.randn(1, 6, 150, 64), torch.randn(1, 6, 150, 64)),
        input_names=("q", "k", "v"),
        output_names=("out",),
        dynamic_axes={"q": {2: "seq"}, "out": {2: "seq"}},
    )
    _, parity, delegation = write_units({"attention": unit}, tmp_path, 1e-5, lambda _: None, max_seq_len=8)
    assert parity["attention"].max_abs_diff <= 1e-5
    # the inputs' reshapes stay out of XNNPACK on purpose: views in ExecuTorch (the test after this one)
    portable = set(delegation["attention"].non_delegated_ops) - {"getitem", "sym_size", "aten_view_copy_default"}
    assert not portable, portable


def test_a_programs_inputs_are_the_callers_tensors_not_copies(tmp_path):
    """Copying a Whisper decode step's cross-attention K/V (8 x 2.3 MB for tiny.en) into planned buffers cost 2 ms
    of every step: the inputs are left unplanned, as ExecuTorch's LLM export does, and the caller's are used."""
    from executorch.runtime import Runtime

    from edgemfm.exporters.executorch import write_units
    from edgemfm.exporters.family import ExportUnit

    unit = ExportUnit(
        module=_CrossAttention(),
        args=(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)),
        input_names=("q", "k", "v"),
        output_names=("out",),
        dynamic_axes={},
    )
    write_units({"attention": unit}, tmp_path, 1e-5, lambda _: None, max_seq_len=8)
    meta = Runtime.get().load_program(tmp_path / "model.pte").load_method("attention").metadata
    assert [meta.input_tensor_meta(i).is_memory_planned() for i in range(3)] == [False] * 3


def test_a_methods_inputs_reach_xnnpack_as_views_not_reshaped_copies(tmp_path):
    """XNNPACK runs a reshape as a copy: a Whisper decode step copied its 8 cross-attention K/V inputs (18 MB for
    tiny.en) to reshape them for the batched matmuls at every call; left to ExecuTorch they are views of the inputs."""
    from executorch.exir.backend.utils import get_delegates
    from executorch.runtime import Runtime

    from edgemfm.exporters.executorch import _config, _sdpa, lower

    module, args = _CrossAttention().eval(), (torch.randn(1, 2, 1, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8))
    program = torch.export.export(module, args, strict=False)
    edge = lower(
        {"attention": program.run_decompositions({torch.ops.aten.scaled_dot_product_attention.default: _sdpa})}
    )
    graph = edge.exported_program("attention").graph_module
    inputs = [n for n in graph.graph.nodes if n.op == "placeholder"]
    reshaped = [u for n in inputs for u in n.users if "view_copy" in str(u.target)]  # q, k and v, outside XNNPACK
    assert len(reshaped) == 3 and get_delegates(graph.graph)
    executorch = edge.to_executorch(_config())
    views = [n for n in executorch.exported_program("attention").graph.nodes if "view" in str(n.target)]
    assert len(views) >= 2 and not [n for n in views if "view_copy" in str(n.target)]
    (tmp_path / "attention.pte").write_bytes(executorch.buffer)
    got = Runtime.get().load_program(tmp_path / "attention.pte").load_method("attention").execute(list(args))[0]
    assert float((got - module(*args)).abs().max()) <= 1e-5


class _Values(torch.nn.Module):
    """A value projection's path to the llama:: cache: transformers' transpose to [1, heads, seq, d], then ours back."""

    def __init__(self):
        super().__init__()
        self.v_proj, self.o_proj = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)

    def forward(self, x):
        heads = self.v_proj(x).view(1, x.shape[1], 4, 16).transpose(1, 2)
        return self.o_proj(heads.transpose(1, 2).reshape(1, x.shape[1], 64))


def test_a_transpose_of_a_transpose_is_folded_before_xnnpack_runs_it(tmp_path):
    """Every op of a dynamic-shape XNNPACK subgraph is re-planned at each call: SmolLM2's decode step ran 180
    transposes ExecuTorch's own program has not, 60 of them a value's pair with nothing between."""
    from executorch.exir.backend.utils import get_delegates

    from edgemfm.exporters.executorch import lower

    module, x = _Values().eval(), torch.randn(1, 5, 64)
    seq = torch.export.Dim("seq", min=1, max=32)
    program = torch.export.export(module, (x,), dynamic_shapes=({1: seq},), strict=False)
    edge = lower({"forward": program})
    graph = edge.exported_program("forward").graph_module
    delegated = [n for d in get_delegates(graph.graph) for n in getattr(graph, d.name).original_module.graph.nodes]
    assert delegated and not [n for n in delegated if "permute" in str(n.target) or "transpose" in str(n.target)]
    (tmp_path / "values.pte").write_bytes(edge.to_executorch().buffer)
    from executorch.runtime import Runtime

    got = Runtime.get().load_program(tmp_path / "values.pte").load_method("forward").execute([x])[0]
    assert float((got - module(x)).abs().max()) <= 1e-5


def test_the_runtimes_thread_count_reaches_the_pool_custom_sdpa_runs_on(tmp_path):
    """llama::custom_sdpa splits on torch's intra-op pool, not ExecuTorch's: a decode step at 1,024 positions
    ran a second spinning thread beside a 1-thread ExecuTorch pool (130 to 1,590 CPU ms a step, 23 ms at 1)."""
    from executorch.extension.pybindings import portable_lib

    from edgemfm.runtimes.executorch import open_components

    before = (torch.get_num_threads(), portable_lib._threadpool_get_thread_count())
    torch.set_num_threads(2)
    try:
        open_components(tmp_path, {}, None, None, threads=1)
        assert (torch.get_num_threads(), portable_lib._threadpool_get_thread_count()) == (1, 1)
    finally:
        torch.set_num_threads(before[0])
        portable_lib._unsafe_reset_threadpool(before[1])


@pytest.mark.parametrize("max_seq_len", [1, 5, 64, 1024])
def test_a_smaller_max_seq_len_shrinks_the_streaming_settings_so_the_bundle_loads(max_seq_len):
    from edgemfm.exporting import _streaming
    from edgemfm.runtimes.pipeline import _check_streaming

    pi5 = edgemfm.load_profile("pi5").streaming  # prefill_chunk 64 after 4 sink tokens
    settings = _streaming(pi5, max_seq_len)
    _check_streaming(settings)  # what edgemfm.load checks
    assert settings.max_seq_len == max_seq_len
    assert settings.prefill_chunk == min(pi5.prefill_chunk, max_seq_len - settings.sink_tokens)


def test_a_component_torch_export_cannot_capture_fails_the_export_in_one_line(tmp_path, monkeypatch, capsys):
    """With the item axes left dynamic, torch.export really fails on the vision encoder (its example
    holds one image, so torch specializes the axis): one line naming the method and torch's reason."""
    from edgemfm.exporters import executorch

    monkeypatch.setattr(executorch, "ONE_ITEM", ())
    checkpoint = tiny_llava(tmp_path / "tiny-llava")
    out = tmp_path / "pte"
    assert (
        main(
            [
                "export",
                "--model",
                str(checkpoint),
                "--device",
                "pi5",
                "--format",
                "pte",
                "--max-seq-len",
                "32",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = err.strip().splitlines()[-1]  # after what importing torchao and executorch prints
    assert err.startswith(
        "edgemfm: error: vision_encoder: torch.export could not capture this component for --format pte: "
    )
    assert err.endswith(
        "Constraints violated (images)! You marked images as dynamic but your code specialized it to be a constant (1)."
    )
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-llava"]  # no bundle, no staging directory left


def test_the_demo_encoders_take_one_item_per_call(tmp_path):
    """The demo's encoders name their item axis `items`: a program takes one image or clip per call,
    as the Pipeline feeds them (an example of one item on a dynamic axis made torch.export fail).
    Captured only: lowering and running the real demo program is tests/test_pte_demo.py (-m slow)."""
    from test_demo import tiny_demo

    from edgemfm.exporters import find_family
    from edgemfm.exporters.executorch import _capture, _component

    checkpoint = tiny_demo(tmp_path / "tiny-demo")
    family = find_family(json.loads((checkpoint / "config.json").read_text()))
    units = family.split(family.load(checkpoint), checkpoint).units
    # the audio encoder: the vision encoder's unit is made by the same function (exporters/demo.py), and
    # capturing the real EfficientNet-Lite0 tower costs the default suite most of a minute
    unit = units["audio_encoder"]
    assert [axes for n in ("vision_encoder", "audio_encoder") for axes in units[n].dynamic_axes.values()] == [
        {0: "items"}
    ] * 4
    program, reference, peak, flops = _capture("audio_encoder", unit, 32)
    component = _component("audio_encoder", unit, program, reference, peak, flops)
    assert component.inputs[0].shape == (1, 80, 200) and component.outputs[0].shape == (
        1,
        5,
        96,
    )  # one 2 s clip -> 5 rows
