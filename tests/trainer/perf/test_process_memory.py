"""The /proc/<pid>/status reader the benchmarks share."""

import os

import pytest

from trainer.perf.process_memory import proc_status_kib


def test_reads_this_process_and_another_by_pid() -> None:
    resident = proc_status_kib("VmRSS")
    assert resident > 0 and proc_status_kib("VmHWM") >= resident
    assert proc_status_kib("VmRSS", os.getppid()) > 0


def test_an_unknown_field_and_a_gone_process_fail_clearly() -> None:
    with pytest.raises(KeyError, match="VmNothing not in /proc/self/status"):
        proc_status_kib("VmNothing")
    with pytest.raises(OSError):
        proc_status_kib("VmRSS", 2**31 - 1)  # above any pid_max
