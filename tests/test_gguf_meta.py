"""Our fast GGUF header reader must agree with gguf-py's GGUFReader on every field and tensor."""

from __future__ import annotations

import gguf
import pytest

from edgekit.converters.gguf.writer import GGUFConfig, write_gguf
from edgekit.errors import EdgekitError
from edgekit.io.gguf_reader import read_header


@pytest.mark.parametrize("arch,quant", [("llama", "q4_k_m"), ("mistral", "f16"), ("qwen2", "q8_0")])
def test_matches_gguf_py(arch, quant, tiny_models, tmp_path):
    out = tmp_path / "m.gguf"
    write_gguf(tiny_models[arch], out, GGUFConfig(quant=quant), progress=False)
    ours, ref = read_header(out), gguf.GGUFReader(out)
    ref_fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert ours.fields.keys() == ref_fields.keys()
    for key, f in ref_fields.items():
        assert ours.fields[key].type == f.types[0], key
        assert ours.fields[key].value == f.contents(), key
    assert [(t.name, t.type, t.shape, t.offset, t.nbytes) for t in ours.tensors] == [
        (t.name, t.tensor_type, tuple(int(d) for d in reversed(t.shape.tolist())), t.data_offset, int(t.n_bytes))
        for t in ref.tensors]


def test_truncated_and_foreign_files(tiny_models, tmp_path):
    good = tmp_path / "good.gguf"
    write_gguf(tiny_models["qwen2"], good, GGUFConfig(quant="f16"), progress=False)
    data = good.read_bytes()
    for cut in (10, 200, 5000, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(EdgekitError, match="cut.gguf"):
            read_header(tmp_path / "cut.gguf")
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(EdgekitError, match="not a GGUF file"):
        read_header(tmp_path / "x.gguf")


def test_inspect_agrees_with_gguf_py(tiny_models, tmp_path):
    """`edgekit inspect`'s summary, in process: types, sizes and parameter counts from gguf-py's own reading."""
    from edgekit.inspect import format_report, inspect_file

    out = tmp_path / "m.gguf"
    write_gguf(tiny_models["phi3"], out, GGUFConfig(quant="q4_k_m"), progress=False)
    info = inspect_file(out, tensors=True)
    ref = gguf.GGUFReader(out)
    assert info["format"] == "gguf" and info["architecture"] == "phi3" and info["n_tensors"] == len(ref.tensors)
    assert info["n_params"] == sum(int(t.n_elements) for t in ref.tensors)
    by_type: dict[str, int] = {}
    for t in ref.tensors:
        by_type[t.tensor_type.name] = by_type.get(t.tensor_type.name, 0) + 1
    assert {k: v["tensors"] for k, v in info["types"].items()} == by_type
    text = format_report(info)
    assert "architecture  phi3" in text and "tensors" in text and ref.tensors[0].name in text
    assert "tensors" not in inspect_file(out)
