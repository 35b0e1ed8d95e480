"""`edgekit bundle`: the directory an app ships -- model file, tokenizer, a versioned manifest.json with
everything a runner needs besides the weights (format, backend, context length, chat template, stop tokens,
default sampling, sha256 of every file) and a short integration note for the target platform.

`verify(dir)` checks the manifest and every checksum before a bundle is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from edgekit import __version__
from edgekit.errors import EdgekitError
from edgekit.io.output import temp_path

MANIFEST = "manifest.json"
SCHEMA = "edgekit-bundle"
SCHEMA_VERSION = 1
TARGETS = ("android", "ios", "linux")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _model_files(model: Path) -> list[Path]:
    """The model file and what its runtime needs beside it (a .pte's tokenizer and manifest sidecars)."""
    if model.suffix != ".pte":
        return [model]  # a GGUF carries its tokenizer and chat template inside
    extra = [model.with_name("tokenizer.json"), model.with_name("tokenizer_config.json"),
             model.with_name(model.stem + ".manifest.json")]
    return [model, *(p for p in extra if p.is_file())]


JAVA_PACKAGE = "dev.edgekit"


def _java_sources(libdir: Path) -> list[Path]:
    """dev.edgekit's .java files: installed beside libedgekit (edgekit/java), else a source checkout's native/java."""
    package = Path(__file__).resolve().parents[1]
    for root in (libdir / "java", package / "java", package.parent / "native" / "java"):
        found = sorted((root / "dev" / "edgekit").glob("*.java"))
        if found:
            return found
    return []


def _native_runtime() -> tuple[list[tuple[Path, str]], dict[str, Any]]:
    """What an app needs of edgekit's C runtime, as this install has it: libedgekit and the JNI glue
    (libedgekit_jni, built with the package when a JDK was found) for this machine's OS and architecture, and
    the Java sources; as (source, path in the bundle) pairs and the manifest's "runtime" entry."""
    from edgekit.native import lib

    libedgekit = Path(lib()._name).resolve()
    jni = libedgekit.with_name(libedgekit.name.replace("libedgekit", "libedgekit_jni"))
    host = f"{sys.platform}-{platform.machine().lower()}"
    libdir = f"lib/{host}"
    files = [(libedgekit, f"{libdir}/{libedgekit.name}")]
    if jni.is_file():
        files.append((jni, f"{libdir}/{jni.name}"))
    java = _java_sources(libedgekit.parent)
    files += [(j, f"java/dev/edgekit/{j.name}") for j in java]
    entry = {
        "backend": "native", "java_package": JAVA_PACKAGE if java else None,
        "libraries": {"dir": libdir, "host": host, "android_abi": None, "jni": jni.is_file()},
    }
    return files, entry


def make_bundle(model_path: str | Path, target: str, out_dir: str | Path, *, sampling: Any = None) -> Path:
    """Write a bundle of the model for `target` into out_dir (which must not exist, or be empty). An Android
    bundle of a GGUF that edgekit's C runtime runs also carries that runtime (this machine's build) and its Java
    classes."""
    from edgekit.runtime import SamplingParams, load, model_file

    if target not in TARGETS:
        raise EdgekitError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgekitError(f"{out}: exists and is not an empty directory")
    if not out.parent.resolve().is_dir():
        raise EdgekitError(f"{out}: directory {out.parent} does not exist")
    src = model_file(model_path)
    runtime_files: list[tuple[Path, str]] = []
    runtime = None
    model = None
    if target == "android" and src.suffix != ".pte":
        try:  # the app would run it on libedgekit: the bundle describes what that runtime loads
            model = load(src, backend="native")
            runtime_files, runtime = _native_runtime()
        except (EdgekitError, OSError):  # a GGUF the C runtime cannot run (architecture, tensor type), or no
            if model is not None:         # libedgekit in this install: llama.cpp's note instead
                model.close()
            model = None
    if model is None:
        model = load(src)  # the bundle describes what a runtime really loads (and a broken file fails here)
    try:
        info = model.info()
        stop_tokens = [{"id": i, "text": model.token_text(i)} for i in sorted(model.stop_ids)]
    finally:
        model.close()
    files = _model_files(src)
    sampling = sampling or SamplingParams()
    manifest = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "name": info["name"], "target": target,
        "format": info["format"], "backend": info["backend"],
        "model": {"file": src.name, "bytes": src.stat().st_size},
        "context_length": info["n_ctx"], "tokens_per_call": info["n_batch"], "add_bos": info["add_bos"],
        "chat_template": info["chat_template"],
        "stop_tokens": stop_tokens, "stop_strings": info["stop_strings"],
        "default_sampling": {k: v for k, v in sampling.to_dict().items() if k not in ("seed", "ignore_eos")},
        "files": [],
        "created_by": {"edgekit": __version__},
    }
    if runtime:
        manifest["runtime"] = runtime
    try:
        tmp = temp_path(out, directory=True)
    except OSError as e:
        raise EdgekitError(f"{out}: cannot write the bundle ({e.strerror or e})") from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        tmp.chmod(0o777 & ~umask)  # as a directory made by the user, whatever umask the temp path got
        for f, name in [(f, f.name) for f in files] + runtime_files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, tmp / name)
            manifest["files"].append({"path": name, "bytes": (tmp / name).stat().st_size,
                                      "sha256": sha256_file(tmp / name)})
        (tmp / "README.md").write_text(integration_note(manifest), encoding="utf-8")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)  # the bundle appears complete or not at all
    except OSError as e:  # a full disk, a vanished directory: one line, no half-written bundle
        shutil.rmtree(tmp, ignore_errors=True)
        raise EdgekitError(f"{out}: cannot write the bundle ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(bundle: Path) -> dict[str, Any]:
    path = bundle / MANIFEST
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EdgekitError(f"{path}: unreadable bundle manifest ({e})") from None
    if not isinstance(man, dict) or man.get("schema") != SCHEMA:
        raise EdgekitError(f"{path}: not an edgekit bundle manifest (schema {man.get('schema')!r})"
                           if isinstance(man, dict) else f"{path}: not an edgekit bundle manifest")
    version = man.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise EdgekitError(f"{path}: bundle schema version {version!r}; this edgekit reads up to {SCHEMA_VERSION}")
    return man


def verify(bundle: str | Path, checksums: bool = True) -> Path:
    """Check a bundle's files against its manifest (presence, size and, unless checksums=False, sha256); the
    path of its model file."""
    bundle = Path(bundle)
    man = read_manifest(bundle)
    try:
        entries = [(str(e["path"]), int(e["bytes"]), str(e["sha256"])) for e in man["files"]]
        model = bundle / str(man["model"]["file"])
    except (KeyError, TypeError, ValueError):
        raise EdgekitError(f"{bundle / MANIFEST}: malformed bundle manifest (files/model)") from None
    if model.name not in {p for p, _, _ in entries}:
        raise EdgekitError(f"{bundle / MANIFEST}: the model file {model.name} has no checksum")
    for name, size, want in entries:
        f = bundle / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise EdgekitError(f"{bundle / MANIFEST}: file path {name!r} leaves the bundle")
        if not f.is_file():
            raise EdgekitError(f"{f}: missing from the bundle")
        got_size = f.stat().st_size
        if got_size != size:
            raise EdgekitError(f"{f}: corrupt bundle ({got_size} bytes, manifest says {size})")
        got = sha256_file(f) if checksums else want
        if got != want:
            raise EdgekitError(f"{f}: corrupt bundle (sha256 {got[:16]}..., manifest says {want[:16]}...)")
    return model


_RUN = {
    ("gguf", "android"): (
        "Build llama.cpp for Android with the NDK (CMake, `-DANDROID_ABI=arm64-v8a`; its "
        "`examples/llama.android` app shows the JNI glue) and load `{model}` with `llama_model_load_from_file`."),
    ("gguf", "ios"): (
        "Use llama.cpp's XCFramework / Swift package (its `examples/llama.swiftui` app shows the calls; Metal is "
        "used on device) and load `{model}` from the app bundle (`Bundle.main.path(forResource:ofType:)`)."),
    ("gguf", "linux"): (
        "`edgekit chat .`, `edgekit serve .` (OpenAI-compatible HTTP on 127.0.0.1) or from Python "
        "`edgekit.load(\".\")`; llama.cpp's own `llama-cli -m {model}` / `llama-server -m {model}` run it too."),
    ("pte", "android"): (
        "Add ExecuTorch's Android library (with the XNNPACK backend) and run `{model}` with "
        "`org.pytorch.executorch.Module`: `forward(input_ids int64 [1, n], cache_position int64 [n])` returns the "
        "last position's logits; see `{model_stem}.manifest.json` for kernels the program needs."),
    ("pte", "ios"): (
        "Add ExecuTorch's Swift package with the XNNPACK backend (plus the quantized kernels if "
        "`{model_stem}.manifest.json` lists them) and run `{model}`'s `forward(input_ids, cache_position)`."),
    ("pte", "linux"): (
        "`edgekit chat .`, `edgekit serve .` (OpenAI-compatible HTTP on 127.0.0.1) or from Python "
        "`edgekit.load(\".\")` (needs `pip install 'edgekit[pte]'`)."),
}

_BACKEND_NAMES = {"llama.cpp": "llama.cpp", "executorch": "ExecuTorch", "native": "edgekit's C runtime (libedgekit)"}


def _runtime_note(man: dict[str, Any]) -> list[str]:
    """How an Android app runs the model on libedgekit through the dev.edgekit Java classes."""
    rt, model = man["runtime"], man["model"]["file"]
    libs = rt["libraries"]
    jni = ("`libedgekit_jni.so`, the JNI glue, and `libedgekit.so`" if libs["jni"] else
           "`libedgekit.so` only: this edgekit was built without a JDK, so the JNI glue (`libedgekit_jni.so`, "
           "from `native/jni/edgekit_jni.c`) is missing; rebuild edgekit with a JDK installed, or build it with the "
           "NDK as below")
    return [
        f"Run `{model}` on edgekit's C runtime with the Java classes in `java/` (package `{rt['java_package']}`: "
        "copy them into the app's sources; `java/` and `lib/` are not assets).",
        "",
        f"- `{libs['dir']}/` holds {jni}, built for **{libs['host']}**, the machine this bundle was made on: a "
        "desktop JVM can run them (`java -Djava.library.path=" + libs["dir"] + " ...`), an Android device cannot. "
        "For the app, build both for `arm64-v8a` with the Android NDK (not on the machine that made this bundle) "
        "from edgekit's source tree and put them in `src/main/jniLibs/arm64-v8a/`:",
        "",
        "  ```sh",
        "  cmake -S . -B build-android -DCMAKE_TOOLCHAIN_FILE=$ANDROID_NDK/build/cmake/android.toolchain.cmake \\",
        "        -DANDROID_ABI=arm64-v8a -DANDROID_PLATFORM=android-24 -DCMAKE_BUILD_TYPE=Release -DEDGEKIT_JNI=ON",
        "  cmake --build build-android   # native/libedgekit.so, native/libedgekit_jni.so",
        "  ```",
        "",
        "- In the app (after copying the model out of the APK, see above):",
        "",
        "  ```java",
        f"  try (EdgekitModel model = EdgekitModel.load(new File(context.getFilesDir(), \"{model}\").getPath());",
        "       EdgekitSession session = model.newSession(new EdgekitSession.Params().nCtx("
        f"{min(int(man['context_length']), 4096)}))) {{",
        "      String reply = session.chat(Collections.singletonList(Message.user(\"Hello!\")),",
        "              new Sampling().temperature(0.7f),",
        "              piece -> { runOnUiThread(() -> view.append(piece)); return false; });  // true stops",
        "      Log.i(\"edgekit\", session.stats().toString());",
        "  }",
        "  ```",
        "",
        "  Generate on a worker thread; `session.abort()` from any thread stops it; `close()` frees the session and "
        "the model (the model closes its sessions). With R8/ProGuard add `-keep class dev.edgekit.** { *; }` (the "
        "JNI glue calls some methods by name).",
    ]

_SHIP = {
    "android": ("Ship the directory in `assets/`. Assets are compressed inside the APK and cannot be memory-mapped: "
                "copy them to `context.filesDir` on first launch (or mark them `noCompress` in Gradle), then check "
                "the sha256 of each copy against `manifest.json`."),
    "ios": "Add the directory to the app target as a folder reference; files in the app bundle can be memory-mapped.",
    "linux": "Copy the directory anywhere; `edgekit.load(dir)` verifies every checksum before loading.",
}


def integration_note(man: dict[str, Any]) -> str:
    """README.md of a bundle: what is in it and how an app on the target uses it."""
    model = man["model"]["file"]
    run = _RUN[(man["format"], man["target"])].format(model=model, model_stem=Path(model).stem)
    if man.get("runtime"):
        run = "\n".join(_runtime_note(man)) + "\n\nOr, instead: " + run
    stops = ", ".join(f"{t['id']} ({t['text']!r})" if t.get("text") else str(t["id"]) for t in man["stop_tokens"])
    template = ("the Jinja template in `manifest.json` (`chat_template`), rendered as Hugging Face transformers "
                "does" if man["chat_template"] else "none (a base model): use plain text prompts")
    lines = [
        f"# {man['name']} for {man['target']}",
        "",
        f"Made by edgekit {man['created_by']['edgekit']}: a {man['format'].upper()} model for "
        f"{_BACKEND_NAMES.get(man['backend'], man['backend'])}, "
        f"context {man['context_length']} tokens.",
        "",
        "## Files",
        "",
        *(f"- `{f['path']}` ({f['bytes']:,} bytes, sha256 `{f['sha256']}`)" for f in man["files"]),
        "- `manifest.json`: format, backend, context length, chat template, stop tokens, default sampling, "
        f"checksums (schema `{SCHEMA}` version {SCHEMA_VERSION})",
        "",
        "## Shipping it",
        "",
        _SHIP[man["target"]],
        "",
        "## Running it",
        "",
        run,
        "",
        f"- Chat format: {template}.",
        f"- Stop generating at token ids {stops or '(none)'}"
        + (f" or when the text contains {', '.join(map(repr, man['stop_strings']))}" if man["stop_strings"] else "")
        + ".",
        "- Default sampling: " + ", ".join(f"{k} {v}" for k, v in man["default_sampling"].items()) + ".",
        "",
    ]
    return "\n".join(lines)
