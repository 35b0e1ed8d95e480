"""The public API: one verb per step over a config, all reachable from `edgekit`, imported on first use."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import edgekit
from edgekit.errors import EdgekitError

VERBS = ("convert", "prune", "sparsify", "distill")


def test_import_is_cheap() -> None:
    """`import edgekit` loads none of the heavy libraries; the first use of a name loads its module only."""
    code = ("import sys, edgekit; heavy = [m for m in ('torch', 'transformers', 'llama_cpp', 'executorch') "
            "if m in sys.modules]; edgekit.SamplingParams; print(heavy, 'edgekit.runtime' in sys.modules, "
            "'edgekit.converters.convert' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "True", "False"], out


def test_every_public_name_resolves() -> None:
    assert {"convert", "prune", "sparsify", "distill", "evaluate", "load"} <= set(edgekit.__all__)
    for name in edgekit.__all__:
        assert getattr(edgekit, name) is not None, name
        assert name in dir(edgekit)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        edgekit.nope  # noqa: B018


@pytest.mark.parametrize("verb", VERBS)
def test_one_shape(verb: str) -> None:
    """Every file-to-file step is verb(source, output, config, *, run-time options)."""
    params = list(inspect.signature(getattr(edgekit, verb)).parameters.values())
    assert [p.kind for p in params[:3]] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 3
    assert params[2].name == "cfg"
    assert all(p.kind == inspect.Parameter.KEYWORD_ONLY for p in params[3:])


def test_convert_picks_the_format(tiny_models, tmp_path: Path) -> None:
    """The output's suffix picks the exporter; the default config is the format's default scheme."""
    from edgekit.io.gguf_reader import read_header

    src = tiny_models["llama"]
    r = edgekit.convert(src, tmp_path / "m.gguf", progress=False)
    assert r.output == tmp_path / "m.gguf" and {"Q4_K", "Q6_K"} <= set(r.types), r.types  # the Q4_K_M mix
    assert read_header(r.output).get("general.file_type") == 15  # llama.cpp's MOSTLY_Q4_K_M
    with edgekit.load(r.output) as m:  # and llama.cpp runs it
        assert m.backend == "llama.cpp" and m.generate("def", max_tokens=4, temperature=0, ignore_eos=True)


def test_convert_refuses_mismatches(tiny_models, tmp_path: Path) -> None:
    src = tiny_models["llama"]
    cases = [(tmp_path / "m.bin", None, "m.bin: output must be a .gguf (llama.cpp) or .pte (ExecuTorch) file"),
             (tmp_path / "m.gguf", edgekit.PteConfig(), "PteConfig options are not for .gguf output"),
             (tmp_path / "m.pte", edgekit.GGUFConfig(), "GGUFConfig options are not for .pte output")]
    for out, cfg, message in cases:
        with pytest.raises(EdgekitError, match=re.escape(message)):
            edgekit.convert(src, out, cfg, progress=False)
        assert not out.exists()


def test_convert_runs_a_recipe(tiny_models, tmp_path: Path) -> None:
    """A Recipe as the config: its steps run first; source and output come from the call."""
    recipe = edgekit.Recipe(source="ignored", output="ignored", steps=[("sparsify", {"method": "magnitude",
                                                                                    "sparsity": 0.5})])
    r = edgekit.convert(tiny_models["llama"], tmp_path / "sparse", recipe, progress=False)
    assert r.student_dir == tmp_path / "sparse" and r.export is None
    record = json.loads((tmp_path / "sparse" / "edgekit_recipe.json").read_text())
    assert record["source"] == str(tiny_models["llama"])
    sparsity = json.loads((tmp_path / "sparse" / "edgekit_sparsity.json").read_text())
    assert sparsity["method"] == "magnitude" and abs(sparsity["overall"] - 0.5) < 1e-3
