"""Machine detection honours container (cgroup) limits."""

from __future__ import annotations

from service.sizing.machine import detect_machine


def test_host_figures_without_cgroup_limits(tmp_path):
    machine = detect_machine(cgroup_root=tmp_path)
    assert machine.cores >= 1
    assert 0 < machine.ram_available_bytes <= machine.ram_total_bytes


def test_cgroup_v2_limits_win(tmp_path):
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # one core
    (tmp_path / "memory.max").write_text(str(2 * 1024**3))
    (tmp_path / "memory.current").write_text(str(512 * 1024**2))
    machine = detect_machine(cgroup_root=tmp_path)
    assert machine.cores == 1
    assert machine.ram_total_bytes == 2 * 1024**3
    assert machine.ram_available_bytes == 2 * 1024**3 - 512 * 1024**2


def test_cgroup_v2_without_limits(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "memory.max").write_text("max\n")
    host = detect_machine(cgroup_root=tmp_path / "absent")
    assert detect_machine(cgroup_root=tmp_path).cores == host.cores


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert detect_machine(cgroup_root=tmp_path).cores == 1  # half a core still gets one worker's worth
