"""The built-in demo model (EfficientNet-Lite0 + Whisper tiny.en encoder + SmolLM2-135M) as one
ExecuTorch program: each method against the PyTorch components, and greedy answers to held-out
questions equal to the ONNX bundle's and to PyTorch's.

All slow: the pte export takes about 25 minutes on 2 loaded cores. Set EDGEMFM_DEMO_PTE_BUNDLE
(and EDGEMFM_DEMO_BUNDLE for the ONNX one) to reuse bundles `edgemfm export --device host
[--format pte]` wrote, and EDGEMFM_DEMO_DATA to a folder samples/demo_model/build_dataset.py wrote
for its held-out questions (else the repository's sample questions are asked).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import demo_weights
from test_pte import methods_match_pytorch

import edgemfm
from edgemfm.bundle import read_manifest

pytestmark = pytest.mark.slow

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "demo_model" / "media"
METHODS = {"vision_encoder", "audio_encoder", "token_embedding", "text_decoder"}
PER_KIND = 3  # held-out questions of each media kind
MAX_NEW_TOKENS = 8  # the demo's answers are one or two words


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory) -> Path:
    from edgemfm.exporters import demo_sources

    demo_weights()
    return demo_sources.build_default(tmp_path_factory.mktemp("models") / demo_sources.MODEL_ID)


def _questions() -> list[tuple[str, Path, str]]:
    """(kind, media file, prompt) of held-out questions: from $EDGEMFM_DEMO_DATA's eval.jsonl, else the samples."""
    if data := os.environ.get("EDGEMFM_DEMO_DATA"):
        from edgemfm.tune.quality import read_questions

        return [(q.kind, Path(q.media), q.prompt) for qs in read_questions(data, PER_KIND).values() for q in qs]
    rows = json.loads((SAMPLES / "questions.json").read_text())
    return [("image" if media.endswith(".png") else "audio", SAMPLES / media, prompt) for media, prompt, _ in rows]


def _pytorch_answer(model, pipe, kind: str, media: Path, prompt: str) -> list[int]:
    """Greedy tokens of the PyTorch demo model, from the runtime's pre-processed input and prompt ids."""
    from edgemfm.exporters.demo import AUDIO, IMAGE
    from edgemfm.runtimes.audio import preprocess_audio
    from edgemfm.runtimes.preprocess import preprocess_image

    x = preprocess_image(media, IMAGE) if kind == "image" else preprocess_audio(media, AUDIO)[0]
    ids = pipe.prompt_ids(prompt, {kind: 1})
    lm, token = model.language_model, model.config[f"{kind}_token_id"]
    eos = model.config["text_config"]["eos_token_id"]
    with torch.no_grad():
        rows = (model.embed_image if kind == "image" else model.embed_audio)(torch.from_numpy(x[None]))[0]
        text = lm.get_input_embeddings()(torch.tensor(ids))
        at = ids.index(token)
        embeds = torch.cat([text[:at], rows, text[at + 1 :]])[None]
        out = lm.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.int64),
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            pad_token_id=eos,
            eos_token_id=eos,
        )
    tokens = out[0].tolist()
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def test_demo_pte_is_one_program_with_a_delegated_method_per_component(demo_pte_bundle):
    from executorch.runtime import Runtime

    manifest = read_manifest(demo_pte_bundle)
    assert [n for n in manifest.files if n.endswith(".pte")] == ["model.pte"] and not [
        n for n in manifest.files if n.endswith(".onnx")
    ]
    assert Runtime.get().load_program(demo_pte_bundle / "model.pte").method_names == METHODS == set(manifest.components)
    kv = manifest.components["text_decoder"].kv_cache
    assert (kv.kind, kv.max_seq_len) == ("static", edgemfm.load_profile("host").streaming.max_seq_len)
    for name, d in manifest.report.delegation.items():
        assert sum(d.non_delegated_ops.values()) == d.non_delegated_nodes, name
        if name != "token_embedding":  # a lookup: ExecuTorch's portable embedding kernel
            assert d.delegated_nodes > 0 and d.subgraphs > 0, name


def test_demo_pte_methods_match_pytorch(demo_checkpoint, demo_pte_bundle):
    """New inputs through each method (the decoder over a prefill and a step) within the family's tolerance."""
    methods_match_pytorch(demo_checkpoint, demo_pte_bundle)


def test_demo_pte_answers_equal_the_onnx_bundle_and_pytorch(demo_checkpoint, demo_pte_bundle, demo_bundle):
    from edgemfm.exporters import demo

    pte, onnx = edgemfm.load(demo_pte_bundle), edgemfm.load(demo_bundle)
    model = demo.load(demo_checkpoint)
    questions = _questions()
    assert {kind for kind, _, _ in questions} == {"image", "audio"}
    for kind, media, prompt in questions:
        feed = {"images" if kind == "image" else "audio": [media]}
        ours = list(pte.generate_tokens(prompt, **feed, max_new_tokens=MAX_NEW_TOKENS))
        assert ours, (media, prompt)  # an answer, not an immediate end of turn
        assert ours == list(onnx.generate_tokens(prompt, **feed, max_new_tokens=MAX_NEW_TOKENS)), (media, prompt)
        assert ours == _pytorch_answer(model, pte, kind, media, prompt), (media, prompt)
