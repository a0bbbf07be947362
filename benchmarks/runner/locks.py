"""Exclusive locks held for a process's life: one writer per samples file, one run per GPU.

``FileLock`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on an open file and writes the holder's pid
and host into it. The kernel drops the lock when the holder exits, however it dies, so a lock
file left by a dead process is no obstacle (it is taken over; the file itself stays, which is
harmless: deleting it could let two processes lock two different files of one name). A second
live process fails at once with ``LockHeld`` naming the holder. On NFS, flock is emulated with
POSIX locks across clients (Linux >= 2.6.12), so it holds between cluster nodes too.

Within one process, asking again for a lock it holds returns the same lock (reference-counted):
a process runs its jobs one after the other, and a second writer object on a file this process
already writes is a resumed view, not a competitor.
"""
from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from pathlib import Path


class LockHeld(RuntimeError):
    """Another live process holds the lock."""


_HELD: dict[str, "FileLock"] = {}
_LAST_GPU: list[int] = []   # the GPU this process leased last: tried first (its model may be cached there)


class FileLock:
    """An exclusive, non-blocking lock on ``path`` (created if missing); use ``acquire``."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd, self._refs = path, fd, 1

    @staticmethod
    def acquire(path: str | Path, what: str) -> "FileLock":
        """Lock ``path`` or raise ``LockHeld`` naming the holder; ``what`` names the resource."""
        path = Path(path).resolve()
        held = _HELD.get(str(path))
        if held is not None:
            held._refs += 1
            return held
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockHeld(f"{what} is in use by another live process ({holder}); lock file {path}. "
                           f"Wait for it to finish or stop it; two processes must not write one "
                           f"result file") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        lock = FileLock(path, fd)
        _HELD[str(path)] = lock
        return lock

    def release(self) -> None:
        """Drop one reference; the last one unlocks (the file stays, see the module docstring)."""
        self._refs -= 1
        if self._refs > 0 or self._fd < 0:
            return
        _HELD.pop(str(self.path), None)
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1


def gpu_lock_dir() -> Path:
    """Where GPU leases live: per host (``$ANCHOR_HARNESS_LOCKS`` or ``<tmp>/anchor-harness-gpus``)."""
    return Path(os.environ.get("ANCHOR_HARNESS_LOCKS") or Path(tempfile.gettempdir()) / "anchor-harness-gpus")


def lease_gpu() -> tuple[int, FileLock]:
    """The first visible CUDA device no other harness process on this host holds, and its lease.

    Devices are identified by UUID, so processes with different ``CUDA_VISIBLE_DEVICES`` (Slurm
    tasks on one node) still see each other's leases. The device this process leased last is
    tried first (a joblib worker keeps its GPU and its cached model). Raises ``LockHeld`` if
    every one is taken.
    """
    import torch

    count = torch.cuda.device_count()
    holders = []
    for index in sorted(range(count), key=lambda i: i not in _LAST_GPU):
        uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", index))
        try:
            lease = FileLock.acquire(gpu_lock_dir() / f"gpu-{uuid}.lock", f"GPU {index}")
        except LockHeld as err:
            holders.append(str(err).split(";")[0])
            continue
        _LAST_GPU[:] = [index]
        return index, lease
    raise LockHeld(f"all {count} visible GPUs are leased by other runs: {'; '.join(holders)}. Run fewer "
                   f"jobs at once (hydra.launcher.n_jobs) or share one on purpose with device=cuda:N")
