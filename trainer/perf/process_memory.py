"""Memory of a running process as Linux reports it in /proc/<pid>/status: the one reader the benchmarks share."""

from __future__ import annotations

from pathlib import Path


def proc_status_kib(field: str, pid: int | str = "self") -> int:
    """A size field of /proc/<pid>/status (`VmRSS` resident now, `VmHWM` its high-water mark) in KiB, the kernel's unit.

    Raises OSError when the process is gone, KeyError when it has no such field (a zombie has no VmRSS).
    """
    path = Path(f"/proc/{pid}/status")
    for line in path.read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise KeyError(f"{field} not in {path}")
