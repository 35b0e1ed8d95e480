"""The Java binding (native/jni, native/java: dev.edgekit) on the host JVM: the JNI glue compiled against the
libedgekit Python uses, the classes with javac, then native/java/test/EdgekitJniTest.java run on a tiny GGUF.
Its texts must equal what edgekit's Python runtime gives on the same file (backend="native", and llama.cpp for
greedy text); it checks streaming, a 4-byte emoji, abort from another thread, errors, two sessions and close
itself. Skipped (with the reason) where no JDK or C compiler is found."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgekit

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Once upon a time, çà 日本"
EMOJI = "\U0001f600"  # 😀: four UTF-8 bytes, a surrogate pair in Java
CHAT = "Hello! How are you?"


def find_jdk() -> Path | None:
    """JAVA_HOME, or the JDK that the javac on PATH belongs to; it must have include/jni.h and java."""
    javac = shutil.which("javac")
    for home in (os.environ.get("JAVA_HOME"), javac and Path(javac).resolve().parents[1]):
        if home and (Path(home) / "include" / "jni.h").is_file() and (Path(home) / "bin" / "java").is_file():
            return Path(home)
    return None


def build_jni(out: Path) -> Path:
    """libedgekit_jni.so from native/jni against the libedgekit edgekit.native loads (its path as rpath)."""
    from edgekit.native import lib

    jdk, cc = find_jdk(), shutil.which("cc") or shutil.which("gcc")
    if jdk is None or cc is None:
        pytest.skip("no JDK with include/jni.h (set JAVA_HOME or put javac on PATH)" if jdk is None
                    else "no C compiler (cc) to build the JNI glue")
    libdir = Path(lib()._name).resolve().parent
    so = out / "libedgekit_jni.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror",
                    f"-I{REPO / 'native/include'}", f"-I{jdk / 'include'}", f"-I{jdk / 'include/linux'}",
                    str(REPO / "native/jni/edgekit_jni.c"), f"-L{libdir}", "-ledgekit", f"-Wl,-rpath,{libdir}",
                    "-o", str(so)], check=True, capture_output=True, text=True)
    java = sorted((REPO / "native/java/dev/edgekit").glob("*.java")) + [REPO / "native/java/test/EdgekitJniTest.java"]
    subprocess.run([str(jdk / "bin/javac"), "-Xlint:all", "-Werror", "-d", str(out / "classes"), *map(str, java)],
                   check=True, capture_output=True, text=True)
    return so


@pytest.mark.parametrize("cc", ["aarch64-linux-gnu-gcc", "arm-linux-gnueabihf-gcc"])
def test_jni_glue_compiles_for_arm(cc, tmp_path):
    """64- and 32-bit ARM Linux (jlong handles hold 4-byte pointers on the latter): warning-free. Compiled only:
    there is no ARM JVM here, and a Linux .so is not an Android one (that needs the NDK)."""
    jdk = find_jdk()
    if jdk is None or shutil.which(cc) is None:
        pytest.skip(f"needs a JDK's jni.h and {cc}")
    subprocess.run([cc, "-c", "-fPIC", "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror",
                    f"-I{REPO / 'native/include'}", f"-I{jdk / 'include'}", f"-I{jdk / 'include/linux'}",
                    str(REPO / "native/jni/edgekit_jni.c"), "-o", str(tmp_path / "edgekit_jni.o")],
                   check=True, capture_output=True, text=True)


def emoji_chain_gguf(root: Path) -> tuple[Path, int]:
    """A tiny random Llama (untied embeddings) taught one thing by hand: after each UTF-8 byte token of EMOJI
    comes the next one, cyclically, so greedy text after the emoji is more of it, a byte per token. Each chain
    token's embedding is a large spike in its own dimension (it dominates the residual stream, whatever the
    layers add), and only its successor's output row reads that dimension. The rest of the model stays random."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgekit.converters.gguf.writer import GGUFConfig, write_gguf
    from edgekit.testing.models import build_tiny_model

    hf_dir = build_tiny_model(root / "hf", "llama", hidden=64, ffn=128, heads=4, kv_heads=2,
                              tie_word_embeddings=False)
    ids = AutoTokenizer.from_pretrained(hf_dir).encode(EMOJI, add_special_tokens=False)
    assert len(set(ids)) == len(ids) > 1, f"the emoji should be several distinct byte tokens: {ids}"
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    emb, out = model.model.embed_tokens.weight, model.lm_head.weight
    with torch.no_grad():
        for dim, (tok, nxt) in enumerate(zip(ids, ids[1:] + ids[:1], strict=True)):
            emb[tok] = 0
            emb[tok, dim] = 100.0
            out[:, dim] = 0
            out[nxt, dim] = 1.0
    model.save_pretrained(hf_dir)
    path = root / "emoji.gguf"
    write_gguf(hf_dir, path, GGUFConfig(quant="f32"), progress=False)
    return path, len(ids)


def decode_lines(stdout: str) -> dict[str, str]:
    return {k: bytes.fromhex(v).decode("utf-8") for k, _, v in (ln.partition("\t") for ln in stdout.splitlines())}


@pytest.mark.slow  # ~28 s alone (torch/transformers imports, a tiny model, javac), ~15 s in a suite
def test_java_binding_matches_python(tmp_path):
    so = build_jni(tmp_path)
    gguf, n_bytes = emoji_chain_gguf(tmp_path)
    assert n_bytes == 4
    jdk = find_jdk()
    run = subprocess.run([str(jdk / "bin/java"), "-Xcheck:jni", f"-Dedgekit.jni.library={so}",
                          "-cp", str(tmp_path / "classes"), "EdgekitJniTest", str(gguf), PROMPT, EMOJI],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    got = decode_lines(run.stdout)
    assert got["ok"] == "all checks passed"
    assert "/nonexistent/dïr" + EMOJI + "/model.gguf" in got["bad_path"]  # the C message, through byte[]

    greedy = {"temperature": 0, "max_tokens": 24}
    with edgekit.load(gguf, backend="native", kv_f32=True, threads=1) as m:
        assert got["generate"] == m.generate(PROMPT, **greedy)
        assert got["seeded"] == m.generate(PROMPT, temperature=0.9, top_k=20, top_p=0.9, min_p=0.02, seed=7,
                                           max_tokens=24)
        assert got["defaults"] == m.generate(PROMPT, seed=3, max_tokens=24)  # SamplingParams' defaults
        assert got["chat"] == m.chat([{"role": "user", "content": CHAT}], **greedy)
        assert got["emoji"] == m.generate(EMOJI, temperature=0, max_tokens=12, ignore_eos=True) == EMOJI * 3
    with edgekit.load(gguf, kv_f32=True, threads=1) as m:  # llama.cpp
        assert got["generate"] == m.generate(PROMPT, **greedy)
    assert len(got["generate"]) > 0 and len(got["chat"]) > 0


BUNDLE_MAIN = """
import dev.edgekit.*;
public final class BundleMain {
    public static void main(String[] a) {
        try (EdgekitModel m = EdgekitModel.load(a[0]);
             EdgekitSession s = m.newSession(new EdgekitSession.Params().nCtx(256).threads(1).kvF32(true))) {
            byte[] b = s.generate(a[1], new Sampling().temperature(0).maxTokens(16))
                    .getBytes(java.nio.charset.StandardCharsets.UTF_8);
            StringBuilder h = new StringBuilder();
            for (byte x : b) h.append(String.format("%02x", x & 0xff));
            System.out.println(h);
        }
    }
}
"""


def test_android_bundle_ships_the_runtime_and_java_classes(f32_ggufs, tmp_path):
    import hashlib
    import json

    from edgekit.runtime.bundle import verify

    gguf, out = f32_ggufs["llama"], tmp_path / "app"
    r = subprocess.run([sys.executable, "-m", "edgekit", "bundle", str(gguf), "--target", "android", "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert verify(out) == out / gguf.name
    files = {f["path"]: f for f in man["files"]}
    for name, f in files.items():  # every file listed, with its real checksum
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == f["sha256"], name
    rt = man["runtime"]
    assert man["backend"] == rt["backend"] == "native" and rt["java_package"] == "dev.edgekit"
    libdir = rt["libraries"]["dir"]
    assert rt["libraries"]["android_abi"] is None and libdir == f"lib/{rt['libraries']['host']}"
    assert {f"{libdir}/libedgekit.so", "java/dev/edgekit/EdgekitModel.java",
            "java/dev/edgekit/EdgekitSession.java"} <= set(files)
    readme = (out / "README.md").read_text()
    assert "arm64-v8a" in readme and "NDK" in readme and "cannot" in readme and "EdgekitModel.load" in readme

    jdk = find_jdk()
    if jdk is None:
        pytest.skip("no JDK: the bundle's Java classes are not compiled and run")
    assert rt["libraries"]["jni"], ("a JDK is here but this edgekit was built without libedgekit_jni: reinstall it "
                                    "(pip install --no-build-isolation --no-deps -e .)")
    assert f"{libdir}/libedgekit_jni.so" in files
    src = tmp_path / "BundleMain.java"
    src.write_text(BUNDLE_MAIN)
    subprocess.run([str(jdk / "bin/javac"), "--release", "8", "-Xlint:all", "-Werror",  # the level Android builds
                    "-d", str(tmp_path / "classes"), str(src),
                    *map(str, sorted((out / "java/dev/edgekit").glob("*.java")))], check=True, capture_output=True)
    run = subprocess.run([str(jdk / "bin/java"), f"-Djava.library.path={out / libdir}",
                          "-cp", str(tmp_path / "classes"), "BundleMain", str(out / gguf.name), PROMPT],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    with edgekit.load(out, backend="native", kv_f32=True, threads=1) as m:
        assert bytes.fromhex(run.stdout.strip()).decode() == m.generate(PROMPT, temperature=0, max_tokens=16)
