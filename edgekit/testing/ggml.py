"""ggml's own CPU matmul, called through ctypes on the libggml-base / libggml-cpu that llama-cpp-python ships:
the reference edgekit's kernels are tested (tests/test_kernels.py) and benchmarked
(benchmarks/gemv_vs_llamacpp.py) against. One graph of ``ggml_mul_mat`` nodes is computed on a persistent ggml
threadpool, as llama.cpp decodes; tensors are views onto numpy buffers, so ggml reads the very bytes edgekit
reads. With ``repack=True`` the weights are instead copied into ggml's CPU_REPACK buffer type, where ggml
rearranges them for its interleaved kernels (e.g. Q4_K as q4_K_8x8 on AVX2): what llama.cpp runs by default
(``use_extra_bufts``) for the types it repacks."""

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
        for name, res, args in [("ggml_backend_reg_dev_get", vp, [vp, ctypes.c_size_t]),
                                ("ggml_backend_reg_get_proc_address", vp, [vp, ctypes.c_char_p]),
                                ("ggml_backend_buft_name", ctypes.c_char_p, [vp]),
                                ("ggml_backend_buft_alloc_buffer", vp, [vp, ctypes.c_size_t]),
                                ("ggml_backend_buft_get_alignment", ctypes.c_size_t, [vp]),
                                ("ggml_backend_buffer_get_base", vp, [vp]),
                                ("ggml_backend_buffer_free", None, [vp]),
                                ("ggml_backend_tensor_alloc", ctypes.c_int, [vp, vp, vp]),
                                ("ggml_backend_tensor_set", None, [vp, vp, ctypes.c_size_t, ctypes.c_size_t]),
                                ("ggml_backend_dev_supports_op", ctypes.c_bool, [vp, vp])]:
            fn = getattr(b, name)
            fn.restype, fn.argtypes = res, args
        c.ggml_backend_cpu_reg.restype = vp

    def repack_buffer_type(self) -> tuple[int, int] | None:
        """(buffer type, device) of ggml's CPU_REPACK extra buffer type, or None if this CPU backend has none."""
        reg = self.cpu.ggml_backend_cpu_reg()
        dev = self.base.ggml_backend_reg_dev_get(reg, 0)
        fn = self.base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
        if not fn:
            return None
        bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(fn)(dev)
        i = 0
        while bufts and bufts[i]:
            if self.base.ggml_backend_buft_name(bufts[i]) == b"CPU_REPACK":
                return bufts[i], dev
            i += 1
        return None

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
                   threads: int, poll: int | None = None, repack: bool = False):
        """A runner computing y[i] = x @ W_i.T for the `count` matrices laid out back to back in w
        (x: (ntokens, ncols) float32, y: (count, ntokens, nrows)). repack: the weights copied into ggml's
        CPU_REPACK buffer (rearranged there); None if ggml does not repack this type and shape on this CPU."""
        nrows, ncols = shape
        size = count + 8
        ctx = self.base.ggml_init(_InitParams(3 * size * self.base.ggml_tensor_overhead()
                                              + self.base.ggml_graph_overhead_custom(4 * size, False), None, True))
        gf = self.base.ggml_new_graph_custom(ctx, 4 * size, False)
        ntok = x.size // ncols
        xt = self.base.ggml_new_tensor_2d(ctx, 0, ncols, ntok)
        self._set_data(xt, x.ctypes.data)
        buf = None
        if repack:
            found = self.repack_buffer_type()
            if found is None:
                self.base.ggml_free(ctx)
                return None
            buft, dev = found
            align = self.base.ggml_backend_buft_get_alignment(buft)
            stride = -(-mbytes // align) * align
            buf = self.base.ggml_backend_buft_alloc_buffer(buft, stride * count)
            if not buf:
                raise MemoryError(f"ggml_backend_buft_alloc_buffer({stride * count})")
            base = self.base.ggml_backend_buffer_get_base(buf)
        for i in range(count):
            wt = self.base.ggml_new_tensor_2d(ctx, int(qt), ncols, nrows)
            if buf is None:
                self._set_data(wt, w.ctypes.data + i * mbytes)
            elif self.base.ggml_backend_tensor_alloc(buf, wt, base + i * stride) != 0:
                raise RuntimeError("ggml_backend_tensor_alloc failed")
            out = self.base.ggml_mul_mat(ctx, wt, xt)
            self._set_data(out, y.ctypes.data + i * ntok * nrows * 4)
            self.base.ggml_build_forward_expand(gf, out)
            if buf is not None:
                # the repack buffer asks for a layout ggml has for this type and shape (setting a tensor it
                # has none for would abort): the device's supports_op answers as llama.cpp's loader asks
                if not self.base.ggml_backend_dev_supports_op(dev, out):
                    self.base.ggml_backend_buffer_free(buf)
                    self.base.ggml_free(ctx)
                    return None
                self.base.ggml_backend_tensor_set(wt, w.ctypes.data + i * mbytes, 0, mbytes)  # repacks
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
            if buf is not None:
                self.base.ggml_backend_buffer_free(buf)
            self.base.ggml_free(ctx)

        run.keep = (work, tp_params)  # alive as long as the runner
        return run, close
