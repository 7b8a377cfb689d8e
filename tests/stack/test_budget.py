"""The registration budget: what a new version costs against what the replica has (stack/budget.py)."""

from __future__ import annotations

from pathlib import Path

from stack.budget import HEADROOM, Budget, Cost, GiB, cgroup_memory, current_budget, is_tmpfs, verdict

MiB = 1 << 20
COLA = Cost(workers=2, per_worker=700 * MiB, unpacked=257 * MiB)  # the measured MPNet cola (docs/deployment.md)


def test_a_version_that_fits_passes_and_one_that_does_not_is_refused_with_the_numbers() -> None:
    roomy = Budget(memory_free=3 * GiB, memory_source="the container's memory limit", temp_free=None,
                   temp_in_memory=True)  # fmt: skip
    assert verdict(COLA, roomy) is None
    needed = round(2 * 700 * MiB * HEADROOM) + 257 * MiB
    tight = Budget(memory_free=needed - 1, memory_source="the container's memory limit 4.00 GiB (in use 2.60 GiB)",
                   temp_free=None, temp_in_memory=True)  # fmt: skip
    refusal = verdict(COLA, tight)
    assert refusal is not None
    assert refusal.startswith(f"not enough memory for 2 more worker(s): needs about {needed / GiB:.2f} GiB")
    assert "+ 0.25 GiB unpacked on a tmpfs" in refusal
    assert "limit 4.00 GiB (in use 2.60 GiB) leaves" in refusal
    assert "\n" not in refusal
    on_disk = Budget(memory_free=needed - 1, memory_source="host", temp_free=None, temp_in_memory=False)
    assert verdict(COLA, on_disk) is None  # an archive unpacked on disk costs no memory


def test_no_room_to_unpack_is_refused() -> None:
    budget = Budget(memory_free=8 * GiB, memory_source="host", temp_free=100 * MiB, temp_in_memory=False)
    refusal = verdict(COLA, budget)
    assert refusal is not None
    assert refusal.startswith("not enough space to unpack the archive: needs 0.25 GiB, TorchServe's TEMP has 0.10")


def test_cgroup_readings_v1_and_v2(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("4294967296\n")
    (v2 / "memory.current").write_text(str(3 * GiB))
    (v2 / "memory.stat").write_text(f"anon 1\ninactive_file {GiB}\nshmem 2\n")
    assert cgroup_memory(v2) == (4 * GiB, 2 * GiB)  # page cache that can be dropped is not in use
    (v2 / "memory.max").write_text("max\n")
    assert cgroup_memory(v2) is None

    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(6 * GiB))
    (v1 / "memory.usage_in_bytes").write_text(str(3 * GiB))
    (v1 / "memory.stat").write_text(f"cache 5\ntotal_inactive_file {GiB // 2}\n")
    assert cgroup_memory(v1.parent) == (6 * GiB, 3 * GiB - GiB // 2)
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712")  # v1's "no limit"
    assert cgroup_memory(v1.parent) is None
    assert cgroup_memory(tmp_path / "none") is None


def test_tmpfs_is_the_longest_mount_point_that_holds_the_path(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("overlay / overlay rw 0 0\ntmpfs /run/ts tmpfs rw,size=1g 0 0\n/dev/sda1 /run/ts/x ext4 rw 0 0\n")
    assert is_tmpfs(Path("/run/ts/10.0.0.2/tmp"), mounts)
    assert not is_tmpfs(Path("/run/ts/x/tmp"), mounts)
    assert not is_tmpfs(Path("/run/tsx"), mounts)
    assert not is_tmpfs(Path("/app"), mounts)


def test_this_machine_has_a_budget(tmp_path: Path) -> None:
    budget = current_budget(tmp_path)
    assert budget.memory_free > 0
    assert budget.temp_free is not None
    assert budget.temp_free > 0
    assert current_budget(None).temp_free is None
