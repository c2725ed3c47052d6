"""Keeping freed memory in CPU training (attnlab.training.memory): buffers come back without page faults."""
import platform
import resource
import subprocess
import sys

import pytest
import torch

from attnlab.training import memory

glibc = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                           reason="glibc's malloc only")


def faults_of(fn) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc
def test_buffers_of_changing_sizes_come_back_without_page_faults():
    assert memory.keep_freed_memory()

    def steps():  # activation-like buffers, 2-30 MB, freed and allocated again in another order
        for size in (30, 2, 17, 9, 25, 4, 30, 12):
            torch.empty(size << 18).fill_(1.0)  # size MiB of float32

    steps()
    assert faults_of(steps) < 200  # without the tuning: thousands (a fresh mapping per large buffer)


def test_switched_off_by_the_environment():
    code = ("from attnlab.training import memory; import sys; "
            "sys.exit(0 if memory.keep_freed_memory() is False else 1)")
    env = {"ATTNLAB_MALLOC_TUNING": "0", "PATH": "/usr/bin:/bin"}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
