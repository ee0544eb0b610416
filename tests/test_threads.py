"""Torch's threads follow the cores other busy processes leave free (distill.threads)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from distill.threads import CpuShare, available_cpus, free_threads


def test_the_thread_count_is_the_cores_left_free_and_at_least_one():
    assert free_threads(2, 0.0) == 2
    assert free_threads(2, 0.6) == 2  # servers and a flow process busy now and then keep both cores
    assert free_threads(2, 0.8) == 1  # a busy process holds a core
    assert free_threads(2, 1.0) == 1
    assert free_threads(2, 5.0) == 1  # never none
    assert free_threads(8, 2.2) == 6
    assert free_threads(4, -0.1) == 4  # a negative estimate (counter noise) is no load


@pytest.fixture
def busy_process():
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.skipif(len(available_cpus()) < 2, reason="needs two CPUs")
def test_beside_a_busy_process_torch_gets_one_core_fewer(busy_process, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(len(available_cpus()))
    try:
        share = CpuShare()
        time.sleep(1.0)
        assert share.others_busy() >= 0.7  # the loop's core, as the kernel counted it
        threads = share.apply(settle_s=1.0)
        assert threads == share.most - 1 == torch.get_num_threads()
        busy_process.kill()
        busy_process.wait()
        assert share.apply(settle_s=1.0) == share.most  # the competitor gone, the cores come back
    finally:
        torch.set_num_threads(before)


def test_a_thread_count_the_user_chose_is_left_alone(busy_process, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    assert not CpuShare.governs()
    assert CpuShare().apply(settle_s=0.5) == before == torch.get_num_threads()
