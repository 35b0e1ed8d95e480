"""ggml's own CPU matmul, called through ctypes on the libggml-base / libggml-cpu that llama-cpp-python ships:
the reference edgekit's kernels are tested (tests/test_kernels.py) and benchmarked
(benchmarks/gemv_vs_llamacpp.py) against. One graph of ``ggml_mul_mat`` nodes is computed on a persistent ggml
threadpool, as llama.cpp decodes; tensors are views onto numpy buffers, so ggml reads the very bytes edgekit
reads."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT


def loaded_ggml_libraries() -> dict[str, str]:
    """Paths of ggml's base and CPU-backend libraries as this process has them mapped, after the binding
    loaded llama.cpp."""
    from edgekit.runtime.backends.llamacpp import llama_cpp

    llama_cpp()
    maps = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libggml-" in line}
    found = {"base": [m for m in maps if Path(m).name.startswith("libggml-base")],
             "cpu": [m for m in maps if Path(m).name.startswith("libggml-cpu")]}
    if not found["base"] or not found["cpu"]:
        raise RuntimeError(f"ggml's libraries are not loaded ({sorted(maps)})")
    return {k: v[0] for k, v in found.items()}


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class _ThreadpoolParams(ctypes.Structure):
    _fields_ = [("cpumask", ctypes.c_bool * 512), ("n_threads", ctypes.c_int), ("prio", ctypes.c_int),
                ("poll", ctypes.c_uint32), ("strict_cpu", ctypes.c_bool), ("paused", ctypes.c_bool)]


class _Cplan(ctypes.Structure):
    _fields_ = [("work_size", ctypes.c_size_t), ("work_data", ctypes.c_void_p), ("n_threads", ctypes.c_int),
                ("threadpool", ctypes.c_void_p), ("abort_callback", ctypes.c_void_p),
                ("abort_callback_data", ctypes.c_void_p), ("use_ref", ctypes.c_bool)]


class Ggml:
    """The few ggml calls a mul_mat graph needs. Tensors are views (no_alloc) onto our numpy buffers:
    ggml reads the very bytes edgekit reads."""

    def __init__(self) -> None:
        # The very libraries llama.cpp runs here: the binding loads its CPU backend (in a portable build, the
        # variant for this CPU), and the mapped files are opened again (dlopen hands back the same ones).
        libs = loaded_ggml_libraries()
        self.base = ctypes.CDLL(libs["base"], mode=ctypes.RTLD_GLOBAL)
        self.cpu = ctypes.CDLL(libs["cpu"], mode=ctypes.RTLD_GLOBAL)
        vp, b, c = ctypes.c_void_p, self.base, self.cpu
        b.ggml_init.restype, b.ggml_init.argtypes = vp, [_InitParams]
        b.ggml_free.argtypes = [vp]
        b.ggml_new_tensor_2d.restype = vp
        b.ggml_new_tensor_2d.argtypes = [vp, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        b.ggml_new_tensor_1d.restype, b.ggml_new_tensor_1d.argtypes = vp, [vp, ctypes.c_int, ctypes.c_int64]
        b.ggml_get_data.restype, b.ggml_get_data.argtypes = vp, [vp]
        b.ggml_mul_mat.restype, b.ggml_mul_mat.argtypes = vp, [vp, vp, vp]
        b.ggml_new_graph_custom.restype, b.ggml_new_graph_custom.argtypes = vp, [vp, ctypes.c_size_t, ctypes.c_bool]
        b.ggml_graph_overhead_custom.restype = ctypes.c_size_t
        b.ggml_graph_overhead_custom.argtypes = [ctypes.c_size_t, ctypes.c_bool]
        b.ggml_tensor_overhead.restype = ctypes.c_size_t
        b.ggml_build_forward_expand.argtypes = [vp, vp]
        b.ggml_threadpool_params_default.restype = _ThreadpoolParams
        b.ggml_threadpool_params_default.argtypes = [ctypes.c_int]
        c.ggml_cpu_init.argtypes = []
        c.ggml_threadpool_new.restype = vp
        c.ggml_threadpool_new.argtypes = [ctypes.POINTER(_ThreadpoolParams)]
        c.ggml_threadpool_free.argtypes = [vp]
        c.ggml_graph_plan.restype, c.ggml_graph_plan.argtypes = _Cplan, [vp, ctypes.c_int, vp]
        c.ggml_graph_compute.restype, c.ggml_graph_compute.argtypes = ctypes.c_int, [vp, ctypes.POINTER(_Cplan)]
        c.ggml_cpu_init()
        self.data_offset = self._find_data_offset()

    def _find_data_offset(self) -> int:
        """Offset of ggml_tensor.data, found rather than assumed (the struct changes between versions)."""
        ctx = self.base.ggml_init(_InitParams(1 << 20, None, False))
        t = self.base.ggml_new_tensor_1d(ctx, 0, 16)
        ptr = self.base.ggml_get_data(t).to_bytes(8, "little")
        raw = ctypes.string_at(t, 512)
        self.base.ggml_free(ctx)
        off = raw.find(ptr)
        if off < 0 or off % 8:
            raise RuntimeError("could not locate ggml_tensor.data")
        return off

    def _set_data(self, tensor: int, addr: int) -> None:
        ctypes.c_void_p.from_address(tensor + self.data_offset).value = addr

    def gemv_graph(self, qt: QT, w: np.ndarray, count: int, mbytes: int, shape, x: np.ndarray, y: np.ndarray,
                   threads: int, poll: int | None = None):
        """A runner computing y[i] = x @ W_i.T for the `count` matrices laid out back to back in w
        (x: (ntokens, ncols) float32, y: (count, ntokens, nrows))."""
        nrows, ncols = shape
        size = count + 8
        ctx = self.base.ggml_init(_InitParams(3 * size * self.base.ggml_tensor_overhead()
                                              + self.base.ggml_graph_overhead_custom(4 * size, False), None, True))
        gf = self.base.ggml_new_graph_custom(ctx, 4 * size, False)
        ntok = x.size // ncols
        xt = self.base.ggml_new_tensor_2d(ctx, 0, ncols, ntok)
        self._set_data(xt, x.ctypes.data)
        for i in range(count):
            wt = self.base.ggml_new_tensor_2d(ctx, int(qt), ncols, nrows)
            self._set_data(wt, w.ctypes.data + i * mbytes)
            out = self.base.ggml_mul_mat(ctx, wt, xt)
            self._set_data(out, y.ctypes.data + i * ntok * nrows * 4)
            self.base.ggml_build_forward_expand(gf, out)
        tp_params = self.base.ggml_threadpool_params_default(threads)
        if poll is not None:
            tp_params.poll = poll
        tp = self.cpu.ggml_threadpool_new(ctypes.byref(tp_params))
        plan = self.cpu.ggml_graph_plan(gf, threads, tp)
        work = np.empty(max(plan.work_size, 1), dtype=np.uint8)
        plan.work_data = work.ctypes.data

        def run() -> None:
            rc = self.cpu.ggml_graph_compute(gf, ctypes.byref(plan))
            if rc != 0:
                raise RuntimeError(f"ggml_graph_compute: status {rc}")

        def close() -> None:
            self.cpu.ggml_threadpool_free(tp)
            self.base.ggml_free(ctx)

        run.keep = (work, tp_params)  # alive as long as the runner
        return run, close
