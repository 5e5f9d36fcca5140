"""Bundle format v1: manifest round trip, integrity checks, atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import edgemfm
from edgemfm import bundle
from edgemfm.errors import BundleError, InputError
from edgemfm.manifest import Manifest


@pytest.fixture
def copy(default_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(default_bundle, dst)
    return dst


def test_manifest_round_trips_through_json(default_bundle):
    text = (default_bundle / "manifest.json").read_text()
    manifest = Manifest.from_json(text)
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert json.loads(manifest.to_json()) == json.loads(text)


def test_manifest_describes_every_component(default_bundle):
    m = bundle.read_manifest(default_bundle)
    assert set(m.components) == {"vision_encoder", "token_embedding", "text_decoder"}
    assert set(m.files) == {"manifest.json"} ^ {p.name for p in default_bundle.iterdir()}
    kv = m.components["text_decoder"].kv_cache
    assert (kv.layers, kv.kv_heads, kv.head_dim) == (4, 2, 32)
    names = [i.name for i in m.components["text_decoder"].inputs]
    assert names[:3] == ["inputs_embeds", "attention_mask", "position_ids"] and len(names) == 3 + 2 * kv.layers
    assert m.components["text_decoder"].inputs[0].shape == ("batch", "seq", 192)
    assert all(c.weight_bytes > 0 and c.peak_activation_bytes > 0 for c in m.components.values())
    assert m.report.parity["text_decoder"].max_abs_diff <= 1e-4


def test_graphs_carry_no_export_signature(default_bundle):
    """torch.export's program signature lists every parameter of the traced model: a pruned draft's encoder
    file would differ from its target's by it alone."""
    import onnx

    from edgemfm.exporters.onnx import EXPORT_SIGNATURE

    for name in ("vision_encoder", "token_embedding", "text_decoder"):
        graph = onnx.load(str(default_bundle / f"{name}.onnx"), load_external_data=False).graph
        assert not [p.key for p in graph.metadata_props if p.key.startswith(EXPORT_SIGNATURE)], name


def test_tampered_file_is_refused(copy):
    path = copy / "text_decoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="text_decoder.onnx.*sha256"):
        edgemfm.load(copy)


def test_truncated_file_is_refused(copy):
    path = copy / "vision_encoder.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BundleError, match="vision_encoder.onnx.*1000 bytes.*truncated"):
        bundle.read_manifest(copy)


def test_missing_file_is_refused(copy):
    (copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json.*missing"):
        bundle.read_manifest(copy)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: {"name": "some other manifest"}, "not an edgemfm bundle manifest"),
        (lambda m: {**m, "schema_version": 3}, "schema version 3 is not supported; this edgemfm reads versions 1, 2"),
        (
            lambda m: {**m, "report": {**m["report"], "extra": 1}},
            "report: unknown key 'extra'; known: precision, parity",
        ),
        (lambda m: {**m, "extra": 1}, "unknown key 'extra'"),
        (lambda m: {**m, "files": {**m["files"], "../escape": {"sha256": "0", "bytes": 1}}}, "not a plain name"),
    ],
)
def test_foreign_or_malformed_manifest_is_refused(copy, edit, message):
    path = copy / "manifest.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(BundleError, match=message):
        bundle.read_manifest(copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a directory"):
        bundle.read_manifest(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="no manifest.json"):
        bundle.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        bundle.read_manifest(tmp_path)


def test_interrupted_write_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with bundle.staging(out) as stage:
            (stage / "half.onnx").write_bytes(b"\0" * 100)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_interrupted_export_leaves_no_bundle(tmp_path, monkeypatch, placeholder_model):
    from edgemfm.exporters import onnx as onnx_writer

    real = onnx_writer.write_onnx
    calls = []

    def fail_on_second(unit, path, *options):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(unit, path, *options)

    monkeypatch.setattr(onnx_writer, "write_onnx", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        edgemfm.export(edgemfm.ExportConfig(model=placeholder_model, device="host", out=tmp_path / "b"))
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_forced(copy, placeholder_model):
    before = (copy / "manifest.json").read_text()
    with pytest.raises(InputError, match="already exists; pass --force"):
        edgemfm.export(edgemfm.ExportConfig(model=placeholder_model, device="host", out=copy))
    assert (copy / "manifest.json").read_text() == before
