"""A tied head and its token embedding: one quantized table in the bundle, read by both graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgemfm.bundle import read_manifest
from edgemfm.quantizers import tied_table


def _export(model, precision: str, out):
    import edgemfm

    return edgemfm.export(edgemfm.ExportConfig(model=str(model), device="host", precision=precision, out=out))


@pytest.fixture(scope="module")
def tied_int4(tied_model, tmp_path_factory):
    return _export(tied_model, "int4", tmp_path_factory.mktemp("tied-int4") / "b")


def _external(init) -> str | None:
    return {e.key: e.value for e in init.external_data}.get("location")


def test_a_tied_head_and_its_lookup_read_one_table_stored_once(tied_int4):
    m = read_manifest(tied_int4)
    assert tied_table.FILE in m.files  # listed, sized and hashed like every bundle file
    embed = onnx.load(str(tied_int4 / "token_embedding.onnx"), load_external_data=False)
    decoder = onnx.load(str(tied_int4 / "text_decoder.onnx"), load_external_data=False)
    (lookup,) = [n for n in embed.graph.node if n.op_type == "GatherBlockQuantized"]
    assert {_external(i) for i in embed.graph.initializer} == {tied_table.FILE}
    ext = {i.name: _external(i) for i in decoder.graph.initializer}
    heads = [n for n in decoder.graph.node if n.op_type == "MatMulNBits" and ext.get(n.input[1]) == tied_table.FILE]
    assert len(heads) == 1 and lookup.input[0] == "tied_data"
    assert "one table" in m.report.quantization["token_embedding"].notes["token_embedding"]


def test_the_int4_head_and_its_table_take_finer_blocks_than_the_layers(tied_int4):
    """presets.HEAD_GROUP: the head (and the table its lookup shares) in blocks of 32, the layers at the preset's 64."""
    from edgemfm.quantizers.presets import HEAD_GROUP, PREFERRED_GROUP

    embed = onnx.load(str(tied_int4 / "token_embedding.onnx"), load_external_data=False)
    decoder = onnx.load(str(tied_int4 / "text_decoder.onnx"), load_external_data=False)
    ext = {i.name: _external(i) for i in decoder.graph.initializer}

    def block(node) -> int:
        return next(a.i for a in node.attribute if a.name == "block_size")

    blocks = {
        ext.get(n.input[1]) == tied_table.FILE: block(n) for n in decoder.graph.node if n.op_type == "MatMulNBits"
    }
    (lookup,) = [n for n in embed.graph.node if n.op_type == "GatherBlockQuantized"]
    assert blocks == {True: HEAD_GROUP, False: PREFERRED_GROUP} and block(lookup) == HEAD_GROUP


def test_the_lookup_returns_the_heads_own_dequantized_rows(tied_int4):
    """The embedding rows are the int4 head's columns: same codes, scales and zero points (equal to
    float rounding: the two kernels order the de-quantizing multiply and subtract differently)."""
    import onnxruntime as ort

    stored = onnx.load(str(tied_int4 / "text_decoder.onnx"), load_external_data=False)
    external = {i.name for i in stored.graph.initializer if _external(i)}
    head = next(n for n in stored.graph.node if n.op_type == "MatMulNBits" and n.input[1] in external)
    decoder = onnx.load(str(tied_int4 / "text_decoder.onnx"))  # the shared bytes read from tied_table.bin
    inits = {i.name: i for i in decoder.graph.initializer}
    k = next(a.i for a in head.attribute if a.name == "K")
    alone = helper.make_graph(
        [head],
        "head",
        [helper.make_tensor_value_info(head.input[0], TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info(head.output[0], TensorProto.FLOAT, None)],
        [inits[n] for n in head.input[1:] if n],
    )
    model = helper.make_model(
        alone, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    columns = session.run(None, {head.input[0]: np.eye(k, dtype=np.float32)})[0]  # [K, vocab]
    embed = ort.InferenceSession(str(tied_int4 / "token_embedding.onnx"), providers=["CPUExecutionProvider"])
    ids = np.arange(columns.shape[1], dtype=np.int64)[None]
    rows = embed.run(None, {embed.get_inputs()[0].name: ids})[0][0]
    assert np.abs(rows - columns.T).max() <= 1e-6 * np.abs(columns).max()


def _graph(nodes, weights: dict[str, np.ndarray]):
    return helper.make_model(
        helper.make_graph(nodes, "g", [], [], [numpy_helper.from_array(w, n) for n, w in weights.items()])
    )


def test_only_equal_tables_count_as_tied():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((12, 8)).astype(np.float32)
    embed = _graph([helper.make_node("Gather", ["t", "ids"], ["e"])], {"t": table})
    tied = _graph([helper.make_node("MatMul", ["h", "w"], ["logits"])], {"w": table.T.copy()})
    other = _graph([helper.make_node("MatMul", ["h", "w"], ["logits"])], {"w": table.T + 1e-3})
    assert tied_table._tied_outputs(embed, tied) == ("e", "ids", "logits", "h")
    assert tied_table._tied_outputs(embed, other) is None


@pytest.fixture(scope="module")
def tied_fp32(tied_model, tmp_path_factory):
    return _export(tied_model, "fp32", tmp_path_factory.mktemp("tied-fp32") / "b")


def test_an_fp32_tied_head_and_its_lookup_read_one_table_stored_once(tied_fp32):
    m = read_manifest(tied_fp32)
    embed = onnx.load(str(tied_fp32 / "token_embedding.onnx"), load_external_data=False)
    decoder = onnx.load(str(tied_fp32 / "text_decoder.onnx"), load_external_data=False)
    (lookup,) = [n for n in embed.graph.node if n.op_type == "Gather"]
    (head,) = [n for n in decoder.graph.node if n.op_type == "FusedMatMul"]
    tables = [i for g in (embed, decoder) for i in g.graph.initializer if i.name in (lookup.input[0], head.input[1])]
    assert {_external(i) for i in tables} == {tied_table.FILE} and len(tables) == 2
    assert len({tuple(e.value for e in i.external_data) for i in tables}) == 1  # the same offset and length
    vocab, hidden = tables[0].dims
    table_bytes = vocab * hidden * 4
    assert (tied_fp32 / tied_table.FILE).stat().st_size == table_bytes
    on_disk = sum((tied_fp32 / f).stat().st_size for f in m.files)
    weights = sum(c.weight_bytes for c in m.components.values())  # what the graphs held, the table twice
    assert on_disk < weights - table_bytes + 2**20  # stored once, the rest of the decoder's weights beside it
    assert "one fp32 table" in m.report.notes["token_embedding"]


def test_the_shared_fp32_graphs_answer_as_the_standalone_ones(tied_fp32, tmp_path):
    """Parity: the head reading the table transposed (FusedMatMul) against the plain MatMul that
    `standalone` writes back; and the bundle loads and decodes."""
    import onnxruntime as ort

    import edgemfm
    from edgemfm.runtimes.kvcache import KVCache

    m = read_manifest(tied_fp32)
    # one of its 3 layers stays unfused (2 GroupQueryAttention) and concatenates its cache anew: not appended in place
    assert not m.components["text_decoder"].kv_cache.shared
    decoder = tied_fp32 / "text_decoder.onnx"
    read = tied_table.standalone(decoder, tmp_path / "decoder.onnx")
    assert read == {tied_table.FILE, "text_decoder.weights"}
    plain = onnx.load(str(tmp_path / "decoder.onnx"))
    assert not [n for n in plain.graph.node if n.op_type == "FusedMatMul"]
    shared = ort.InferenceSession(str(decoder), providers=["CPUExecutionProvider"])
    alone = ort.InferenceSession(str(tmp_path / "decoder.onnx"), providers=["CPUExecutionProvider"])
    cache = KVCache(m.components["text_decoder"].kv_cache, max_len=64, sinks=4)
    cache.make_room(5)
    embeds = np.random.default_rng(0).standard_normal((1, 5, 128)).astype(np.float32)
    feeds = {"inputs_embeds": embeds, **cache.feeds(5)}
    a, b = shared.run(None, feeds)[0], alone.run(None, feeds)[0]
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    assert len(list(edgemfm.load(tied_fp32).generate("hello", max_new_tokens=4))) >= 1
