"""Peak memory of one method: CUDA's allocator peak, or the process's resident-set peak on the CPU.

On the CPU the peak RSS (``VmHWM``, ``ru_maxrss``) only grows over a process's life, so the runner measures
each method in a fresh process, resets the kernel's peak (``/proc/self/clear_refs``, Linux) and reports the
peak over a training step minus the RSS the process had just before the model was built (Python, torch,
transformers, peft, balora and the Trainer stack already imported). The number therefore holds the
model's weights, the optimizer state, the activations, the allocator's slack and anything a library
allocated on the way; it is not a tensor-only count like CUDA's ``max_memory_allocated``. In-process
runs (tests) rely on the same reset.

Beside it, ``tensor_peak_mib`` counts tensors only, as CUDA's allocator does: the bytes of the distinct CPU
tensor storages alive before the step (weights, optimizer state) minus those alive before the model was
built, plus how far torch's CPU allocator's live bytes rise during one step, read from the profiler's
allocation records (``torch.profiler`` with ``profile_memory=True``). It does not move with glibc's heap,
so it is the CPU number to compare with a GPU's, and the one whose ratios repeat from run to run.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
import sys
import warnings
from typing import Any

import torch

MIB = 2**20


def _rss_bytes() -> int | None:
    """The process's current resident set size, or None where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _peak_rss_bytes() -> int:
    """The process's peak RSS: ``VmHWM`` (Linux; reset by ``clear_refs``), else ``ru_maxrss``.

    ``ru_maxrss`` also keeps the peak a thread had when it exited, which a reset does not clear; the
    address space's own high-water mark does not have that memory."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return _ru_maxrss_bytes()


def _reset_hwm() -> bool:
    """Reset the kernel's RSS peak to the current RSS (Linux ``clear_refs`` 5); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS so the starting RSS counts live memory only (glibc)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _settle(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    else:
        _malloc_trim()


def touch_linear_algebra() -> None:
    """Run each LAPACK path a step may use (SVD, randomized SVD, QR, eigh) once on a tiny matrix.

    The first call of a LAPACK routine maps its code and MKL's work buffers into the process (about
    5 MiB, once per process, measured: the first ``svd_lowrank`` adds 5.2 MiB of RSS that
    ``malloc_trim`` does not return, 28 more add nothing). Touching them before the CPU baseline makes every
    method's count what the method holds, not which library routine it happens to call first (PiSSA's
    initialisation and BA-LoRA's SVD term would otherwise pay it, LoRA not).
    """
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(24, 16, generator=generator)
    torch.linalg.svd(matrix, full_matrices=False)
    torch.svd_lowrank(matrix, q=4, niter=2)
    torch.linalg.qr(matrix)
    torch.linalg.eigh(matrix.T @ matrix)
    torch.linalg.eigh((matrix.T @ matrix).double())


def live_tensor_bytes() -> int:
    """Bytes of the distinct CPU tensor storages that Python objects hold (weights, gradients, optimizer
    state, a batch): each storage counted once, however many views share it."""
    storages: dict[int, int] = {}
    with warnings.catch_warnings():  # some modules' lazy attributes warn when isinstance() probes them
        warnings.simplefilter("ignore")
        objects = gc.get_objects()
        tensors = [obj for obj in objects if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        try:
            if obj.device.type == "cpu" and not obj.is_meta:
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
            continue
    return sum(storages.values())


def step_tensor_rise_bytes(step: Any) -> int | None:
    """How far the live bytes of torch's CPU allocator rise above their level at the call while ``step()``
    runs, from the profiler's allocation and free records in time order; None when the profiler cannot
    record memory here. Frees of blocks allocated before the call count as falls (the net may be < 0)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        records = [e for e in prof.profiler.kineto_results.events()
                   if e.name() == "[memory]" and e.device_type() == torch._C._autograd.DeviceType.CPU]
    except (AttributeError, RuntimeError):
        return None
    live = rise = 0
    for record in sorted(records, key=lambda e: e.start_ns()):
        live += record.nbytes()
        rise = max(rise, live)
    return rise


def _current(cuda: bool) -> int:
    return torch.cuda.memory_allocated() if cuda else (_rss_bytes() or 0)


class MemoryMeter:
    """``start()`` before the model is built, ``steady()`` after the warm-up steps, ``report(step)`` after
    the timed steps.

    ``peak_mib`` is a peak minus the amount at ``start`` (so weights, optimizer state and activations
    count; one-off initialisation temporaries such as PiSSA's SVD do not):

    - CUDA: ``max_memory_allocated`` over the timed steps (reset after the warm-up).
    - CPU: the peak RSS (``VmHWM``) over extra steps that each start right after ``malloc_trim``; the
      LAPACK routines are touched before the baseline (:func:`touch_linear_algebra`).
      glibc keeps freed heap pages, so without the trim the RSS creeps up step after step with the
      allocator's fragmentation rather than with what a step needs (BA-LoRA at the ``tiny`` shape: about
      0.8 GiB after 5 steps, 1.2 GiB after 15, 0.6 GiB live). The peak over the untrimmed timed steps is
      kept as ``rss_untrimmed_peak_mib``. Where the peak cannot be reset (no ``/proc/self/clear_refs``)
      the worker's whole-life peak is reported instead, and ``memory_kind`` says so.
    """

    def __init__(self, device: str, fresh_process: bool) -> None:
        self.cuda = device.startswith("cuda")
        self.fresh_process = fresh_process
        self.baseline = 0
        self.tensor_baseline = 0
        self._reset_ok = False

    def start(self) -> None:
        if not self.cuda:
            touch_linear_algebra()
        _settle(self.cuda)
        self.baseline = _current(self.cuda)
        if not self.cuda:
            self.tensor_baseline = live_tensor_bytes()
            _reset_hwm()

    def steady(self) -> None:
        _settle(self.cuda)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self._reset_ok = _reset_hwm()

    def _mib(self, peak: int) -> float:
        return round(max(0, peak - self.baseline) / MIB, 3)

    def report(self, step: Any = None, trimmed_steps: int = 2) -> dict[str, Any]:
        """The memory fields of a row; on the CPU ``step()`` is run ``trimmed_steps`` more times."""
        out: dict[str, Any] = {"baseline_mib": round(self.baseline / MIB, 1)}
        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
            kind = "cuda max_memory_allocated over the timed steps"
        elif self._reset_ok and step is not None:
            out["rss_untrimmed_peak_mib"] = self._mib(_peak_rss_bytes())
            peak = 0
            for _ in range(trimmed_steps):
                _settle(False)
                _reset_hwm()
                step()
                peak = max(peak, _peak_rss_bytes())
            kind = f"cpu peak RSS (VmHWM) over {trimmed_steps} steps each started after malloc_trim"
        else:
            peak = _ru_maxrss_bytes()
            whole = "the worker's whole life" if self.fresh_process else "since process start, not per method"
            kind = f"cpu peak RSS (ru_maxrss) over {whole}"
        out.update(peak_mib=self._mib(peak), process_peak_mib=round(peak / MIB, 1),
                   memory_kind=kind + ", minus the amount before the model was built")
        out["tensor_peak_mib"] = out["peak_mib"] if self.cuda else self._tensor_peak_mib(step)
        return out

    def _tensor_peak_mib(self, step: Any) -> float | None:
        """CPU tensors only: live storages before one more step (less the start's) plus the step's rise."""
        if step is None:
            return None
        gc.collect()
        held = live_tensor_bytes() - self.tensor_baseline
        rise = step_tensor_rise_bytes(step)
        return None if rise is None else round((held + rise) / MIB, 3)


def extra_peak_mib(fn: Any, device: str) -> float | None:
    """How far memory rises above its level at the call while ``fn()`` runs (CUDA allocator or CPU RSS);
    None on a CPU where the RSS peak cannot be reset."""
    cuda = device.startswith("cuda")
    _settle(cuda)
    base = _current(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    elif not _reset_hwm():
        return None
    fn()
    if cuda:
        torch.cuda.synchronize()
    return round(max(0, (torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()) - base) / MIB, 3)
