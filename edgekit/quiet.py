"""Silencing third-party noise, in one place: transformers' bars and warnings, torch/torchao import-time
log lines, and native libraries that print straight to file descriptor 2.

Our own progress bar and one-line errors are the output; these helpers keep the rest out of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

# Loggers that print import-time noise on a CPU build (missing CUDA kernels, pytree deprecations,
# export chatter) that a user cannot act on.
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "torch._export", "torch.export")


def quiet_torch_logs() -> None:
    """Raise torch's and torchao's noisy loggers to ERROR (idempotent)."""
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No weight-loading bars or long-input warnings from transformers while the block runs."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def native_stderr_dropped() -> Iterator[None]:
    """File descriptor 2 goes to a scratch file while the block runs: for C++ code (ExecuTorch's CPU probe)
    that prints lines such as "[cpuinfo_utils.cpp:..] Failed to open midr file" that mean nothing to a user."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as scratch:
            os.dup2(scratch.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)
