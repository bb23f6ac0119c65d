"""``mlsharp doctor``: device facts -> advice (from constructed probes), checkpoint checks,
the CLI on this (CPU-only) machine, and the cached autotune result it shows."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mlsharp import weights
from mlsharp.commands.doctor import format_report
from mlsharp.runtime.autotune import AutotuneResult, Measurement, TuneKey, save_result
from mlsharp.runtime.devices import (
    CUDA_WHEEL_INDEX,
    ROCM_WHEEL_INDEX,
    CpuInfo,
    DriverInfo,
    GpuDevice,
    SystemProbe,
    arch_supported,
    auto_device,
    device_label,
    diagnose,
    probe_system,
    shell_and,
)
from mlsharp.runtime.devices import _gpus as gpus_of
from mlsharp.runtime.doctor import EXIT_CHECKPOINT, EXIT_DEVICE, EXIT_OK, check_checkpoint, examine
from mlsharp.runtime.options import RuntimeOptions
from tests.powershell import assert_parses

CPU = CpuInfo(name="Test CPU", architecture="x86_64", threads=4, capability="AVX2")
LINUX_CPU_ONLY = SystemProbe(
    python="3.11.7", system="Linux", machine="x86_64", torch_version="2.13.0+cpu", cpu=CPU
)
CUDA_TORCH = replace(LINUX_CPU_ONLY, torch_version="2.13.0+cu128", torch_cuda="12.8")
OLD_ARCHES = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")

has_gpu = torch.cuda.is_available() or torch.backends.mps.is_available()


def gpu(**changes) -> GpuDevice:
    base = GpuDevice(
        index=0,
        name="NVIDIA Test GPU",
        backend="cuda",
        arch="sm_90",
        capability=(9, 0),
        total_memory=80 * 2**30,
        bf16=True,
        tf32=True,
        supported_by_build=True,
    )
    return replace(base, **changes)


def codes(probe: SystemProbe) -> list[str]:
    return [f.code for f in diagnose(probe)]


def only_problem(probe: SystemProbe):
    problems = [f for f in diagnose(probe) if f.level == "problem"]
    assert len(problems) == 1, problems
    return problems[0]


# -- advice from facts ---------------------------------------------------------------------


def test_cpu_only_machine_is_fine():
    findings = diagnose(LINUX_CPU_ONLY)
    assert [(f.level, f.code) for f in findings] == [("ok", "cpu_only")]
    assert "no GPU found; running on CPU" in findings[0].message
    assert "this is fine" in findings[0].message
    assert auto_device(LINUX_CPU_ONLY) == "cpu"


def test_nvidia_gpu_with_cpu_only_torch_gets_the_pip_command():
    probe = replace(LINUX_CPU_ONLY, nvidia_device_nodes=True)
    problem = only_problem(probe)
    assert problem.code == "cpu_only_torch"
    assert "/dev/nvidia0" in problem.message and "CPU-only build" in problem.message
    # Same torch version (local "+cpu" tag dropped), from the CUDA index.
    assert f'python -m pip install "torch==2.13.0" --index-url {CUDA_WHEEL_INDEX}' in problem.fix
    assert "python -m pip uninstall -y torch" in problem.fix
    assert "Windows" not in problem.fix
    assert "cpu_only" not in codes(probe)  # never "this is fine" next to a problem


WINDOWS_NVIDIA = replace(
    LINUX_CPU_ONLY,
    system="Windows",
    machine="AMD64",
    executable=r"C:\Users\Zoë O'Neil\mlsharp\.venv\Scripts\python.exe",
    nvidia_smi=r"C:\Windows\System32\nvidia-smi.exe",
    driver=DriverInfo(
        tool="nvidia-smi", driver_version="572.16", gpus=("NVIDIA GeForce RTX 4070",)
    ),
)


def test_windows_nvidia_smi_with_cpu_only_torch_mentions_windows_wheels():
    problem = only_problem(WINDOWS_NVIDIA)
    assert problem.code == "cpu_only_torch"
    assert "nvidia-smi lists NVIDIA GeForce RTX 4070, driver 572.16" in problem.message
    # PowerShell (5.1 has no &&), with this environment's interpreter, not `py`'s choice.
    python = r"& 'C:\Users\Zoë O''Neil\mlsharp\.venv\Scripts\python.exe'"
    assert problem.fix.startswith(
        f"{python} -m pip uninstall -y torch; if ($?) {{ {python} -m pip install "
        f'"torch==2.13.0" --index-url {CUDA_WHEEL_INDEX} }}'
    )
    assert "on Windows, `pip install torch` from PyPI always installs the CPU-only" in problem.fix
    command = problem.fix.split("  (on Windows")[0]
    assert_parses(command, "the Windows fix command")


def test_fix_commands_use_the_users_shell():
    hidden = {"CUDA_VISIBLE_DEVICES": "-1"}
    linux = replace(LINUX_CPU_ONLY, nvidia_device_nodes=True, torch_cuda="12.8")
    windows = replace(WINDOWS_NVIDIA, torch_cuda="12.8")
    assert (
        "`unset CUDA_VISIBLE_DEVICES`" in only_problem(replace(linux, visible_devices=hidden)).fix
    )
    fix = only_problem(replace(windows, visible_devices=hidden)).fix
    assert "`Remove-Item Env:CUDA_VISIBLE_DEVICES`" in fix
    assert_parses("Remove-Item Env:CUDA_VISIBLE_DEVICES", "the Windows fix command")
    assert shell_and(LINUX_CPU_ONLY, "a", "b", "c") == "a && b && c"
    assert shell_and(WINDOWS_NVIDIA, "a", "b", "c") == "a; if ($?) { b }; if ($?) { c }"


def test_nvidia_smi_that_lists_no_gpu_is_not_evidence():
    probe = replace(
        LINUX_CPU_ONLY,
        nvidia_smi="/usr/bin/nvidia-smi",
        driver=DriverInfo(tool="nvidia-smi", error="nvidia-smi failed: No devices were found"),
    )
    assert codes(probe) == ["cpu_only"]


def test_cuda_torch_that_cannot_reach_the_gpu_quotes_torch_and_blames_the_driver():
    reason = "The NVIDIA driver on your system is too old (found version 11040)."
    probe = replace(
        CUDA_TORCH,
        nvidia_device_nodes=True,
        cuda_unavailable_reason=reason,
        driver=DriverInfo(tool="nvidia-smi", driver_version="470.57", gpus=("Tesla T4",)),
    )
    problem = only_problem(probe)
    assert problem.code == "cuda_unavailable"
    assert reason in problem.message and "CUDA 12.8" in problem.message
    assert "driver (470.57) may be too old" in problem.fix
    assert "/dev/nvidia*" in problem.fix  # or a permission / container problem


def test_cuda_visible_devices_hiding_every_gpu_is_named():
    probe = replace(
        CUDA_TORCH, nvidia_device_nodes=True, visible_devices={"CUDA_VISIBLE_DEVICES": ""}
    )
    problem = only_problem(probe)
    assert problem.code == "cuda_hidden" and "CUDA_VISIBLE_DEVICES=''" in problem.message


def test_usable_gpu():
    probe = replace(CUDA_TORCH, cuda_available=True, gpus=(gpu(),), arch_list=OLD_ARCHES)
    assert codes(probe) == ["gpu_ok"]
    assert auto_device(probe) == "cuda"
    assert device_label(probe, "cuda:0") == "NVIDIA Test GPU (sm_90)"


@pytest.mark.parametrize(
    ("arch", "capability", "arch_list", "expected"),
    [
        ("sm_90", (9, 0), OLD_ARCHES, True),
        ("sm_89", (8, 9), OLD_ARCHES, True),  # sm_86 cubins run on 8.9 (same major)
        ("sm_120", (12, 0), OLD_ARCHES, False),  # RTX 50 on a build up to sm_90
        ("sm_120", (12, 0), (*OLD_ARCHES, "sm_100", "sm_120"), True),
        ("sm_120", (12, 0), (*OLD_ARCHES, "compute_90"), True),  # PTX JIT-compiles forward
        ("sm_61", (6, 1), ("sm_70", "sm_80"), False),  # too old for the build
        ("sm_90", (9, 0), ("sm_90a",), True),
        ("sm_90", (9, 0), (), None),  # the build does not say
        ("gfx90a", None, ("gfx90a", "gfx942"), True),
        ("gfx1100", None, ("gfx90a", "gfx942"), False),
    ],
)
def test_arch_supported(arch, capability, arch_list, expected):
    assert arch_supported(arch, capability, arch_list) is expected


def test_gpu_newer_than_the_torch_build_needs_a_newer_cuda_build():
    rtx50 = gpu(
        name="NVIDIA GeForce RTX 5090",
        arch="sm_120",
        capability=(12, 0),
        supported_by_build=arch_supported("sm_120", (12, 0), OLD_ARCHES),
    )
    probe = replace(CUDA_TORCH, cuda_available=True, gpus=(rtx50,), arch_list=OLD_ARCHES)
    problem = only_problem(probe)
    assert problem.code == "gpu_arch_unsupported"
    assert "sm_120" in problem.message and "sm_90" in problem.message
    assert "12.8+ for RTX 50" in problem.fix and CUDA_WHEEL_INDEX in problem.fix
    assert examine_exit_code(probe) == EXIT_DEVICE


def test_amd_gpu_with_non_rocm_torch():
    probe = replace(LINUX_CPU_ONLY, amd_kfd=True)
    problem = only_problem(probe)
    assert problem.code == "non_rocm_torch"
    assert ROCM_WHEEL_INDEX in problem.fix and "Linux only" in problem.fix


def test_rocm_torch_that_cannot_reach_the_gpu_points_at_permissions():
    probe = replace(LINUX_CPU_ONLY, torch_version="2.13.0+rocm6.4", torch_hip="6.4", amd_kfd=True)
    problem = only_problem(probe)
    assert problem.code == "rocm_unavailable" and "render" in problem.fix


def test_usable_rocm_gpu_is_reported_as_rocm():
    mi300 = gpu(
        name="AMD Instinct MI300X", backend="rocm", arch="gfx942", capability=None, tf32=False
    )
    probe = replace(
        LINUX_CPU_ONLY, torch_hip="6.4", cuda_available=True, gpus=(mi300,), amd_kfd=True
    )
    findings = diagnose(probe)
    assert [f.code for f in findings] == ["gpu_ok"] and "ROCm GPU usable" in findings[0].message


@pytest.mark.parametrize(
    ("facts", "code"),
    [
        ({"mps_built": False}, "mps_not_built"),
        ({"mps_built": True}, "mps_unavailable"),
    ],
)
def test_apple_silicon_without_mps(facts, code):
    probe = replace(LINUX_CPU_ONLY, system="Darwin", machine="arm64", **facts)
    assert only_problem(probe).code == code


def test_apple_silicon_with_mps_and_intel_mac():
    mac = replace(LINUX_CPU_ONLY, system="Darwin", machine="arm64")
    with_mps = replace(mac, mps_built=True, mps_available=True)
    assert codes(with_mps) == ["mps_ok"] and auto_device(with_mps) == "mps"
    intel = replace(mac, machine="x86_64")
    assert codes(intel) == ["cpu_only"]
    assert only_problem(replace(intel, rosetta=True)).code == "rosetta_python"


def test_intel_xpu_is_mentioned_but_not_a_problem():
    probe = replace(LINUX_CPU_ONLY, xpu_available=True, xpu_devices=("Intel Arc A770",))
    assert codes(probe) == ["xpu_unused", "cpu_only"]


def examine_exit_code(probe: SystemProbe) -> int:
    return examine(probe=probe).exit_code


# -- the report -------------------------------------------------------------------------


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """An empty user cache (MLSHARP_CACHE) and no MLSHARP_CHECKPOINT."""
    monkeypatch.setenv("MLSHARP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLSHARP_CHECKPOINT", raising=False)
    return tmp_path / "cache"


def test_probe_of_this_machine_matches_torch(cache):
    probe = probe_system(query_driver=False)
    assert probe.torch_version == torch.__version__
    assert probe.torch_cuda == torch.version.cuda
    assert probe.cuda_available == torch.cuda.is_available()
    assert probe.cpu.threads == torch.get_num_threads()
    assert probe.cpu.capability == torch.backends.cpu.get_cpu_capability()
    json.dumps(probe.to_dict())  # JSON-able


class _CudaWithoutContexts:
    """What ``_gpus`` may use of ``torch`` on a two-GPU machine: device count, properties,
    NVML memory. The CUDA calls that create a context on a GPU (``mem_get_info``,
    ``torch.cuda.device``, ``set_device``, ``is_bf16_supported``) are recorded as misuse.
    (No GPU here; on a GPU ``benchmarks/gpu_check.py`` checks the real
    ``torch._C._cuda_hasPrimaryContext`` after a probe.)"""

    def __init__(self) -> None:
        self.context_calls: list[str] = []
        turing = SimpleNamespace(name="T4", major=7, minor=5, total_memory=16 * 2**30)
        hopper = SimpleNamespace(name="H100", major=9, minor=0, total_memory=80 * 2**30)
        self.props = [turing, hopper]
        self.version = SimpleNamespace(hip=None, cuda="12.8")
        self.cuda = SimpleNamespace(
            device_count=lambda: 2,
            get_device_properties=lambda index: self.props[index],
            device_memory_used=lambda index: 2**30,
            mem_get_info=lambda *a: self._misuse("mem_get_info"),
            device=lambda *a: self._misuse("device"),
            set_device=lambda *a: self._misuse("set_device"),
            is_bf16_supported=lambda *a, **k: self._misuse("is_bf16_supported"),
        )

    def _misuse(self, name: str):
        self.context_calls.append(name)
        raise AssertionError(f"torch.cuda.{name} creates a CUDA context")


def test_gpu_probe_creates_no_context_on_any_gpu():
    fake = _CudaWithoutContexts()
    found = gpus_of(fake, ("sm_75", "sm_90"))
    assert fake.context_calls == []
    assert [g.name for g in found] == ["T4", "H100"]
    assert [g.bf16 for g in found] == [False, True]  # the T4 only emulates bf16
    assert [g.free_memory for g in found] == [15 * 2**30, 79 * 2**30]  # from NVML


def test_report_exit_codes_and_next_steps(cache, tiny_checkpoint):
    healthy = examine(probe=LINUX_CPU_ONLY)
    assert healthy.exit_code == EXIT_OK and healthy.healthy
    assert not healthy.checkpoint.present and healthy.checkpoint.source == "default"
    assert any("mlsharp download" in step for step in healthy.next_steps)

    broken_gpu = examine(probe=replace(LINUX_CPU_ONLY, nvidia_device_nodes=True))
    assert broken_gpu.exit_code == EXIT_DEVICE
    assert broken_gpu.next_steps[0] == broken_gpu.findings[0].fix

    text = format_report(examine(tiny_checkpoint, preset="tiny", probe=LINUX_CPU_ONLY))
    rows = dict(
        (line[:11].strip(), line[12:]) for line in text.splitlines()[:7] if line[:11].strip()
    )
    assert rows["torch"] == "2.13.0+cpu (CPU-only build)"
    assert rows["CPU"].startswith("Test CPU: 4 threads, AVX2")
    assert rows["auto"] == "--device auto uses cpu"
    assert "OK (" in rows["Checkpoint"] and "keys+shapes for preset tiny" in rows["Checkpoint"]
    assert rows["Autotune"] == "none cached for this machine"
    assert "mlsharp autotune --preset tiny" in text


def test_checkpoint_present_and_verified(cache, tiny_checkpoint):
    status = check_checkpoint(tiny_checkpoint, preset="tiny")
    assert status.present and status.verified is True
    assert status.checks == ("keys+shapes",)
    assert status.sha256 == weights.sha256_file(tiny_checkpoint)
    assert status.size == tiny_checkpoint.stat().st_size


def test_checkpoint_checked_against_a_known_digest(cache, tiny_checkpoint, monkeypatch):
    digest = weights.sha256_file(tiny_checkpoint)
    info = weights.CheckpointInfo(name=tiny_checkpoint.name, url="https://x/tiny.pt", sha256=digest)
    monkeypatch.setitem(weights.KNOWN_CHECKPOINTS, tiny_checkpoint.name, info)
    good = check_checkpoint(tiny_checkpoint, preset="tiny")
    assert good.verified and good.checks == ("sha256", "keys+shapes")

    monkeypatch.setitem(
        weights.KNOWN_CHECKPOINTS, tiny_checkpoint.name, replace(info, sha256="0" * 64)
    )
    bad = check_checkpoint(tiny_checkpoint, preset="tiny")
    assert bad.verified is False and "SHA-256" in bad.problem and digest in bad.problem


def test_checkpoint_from_the_environment_and_wrong_preset(cache, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("MLSHARP_CHECKPOINT", str(tiny_checkpoint))
    status = check_checkpoint(None, preset="sharp")
    assert status.source == "MLSHARP_CHECKPOINT" and status.present
    assert (
        status.verified is False and "does not match the model (preset 'sharp')" in status.problem
    )


def test_missing_named_checkpoint_is_a_problem_but_missing_default_is_not(cache, tmp_path):
    named = check_checkpoint(tmp_path / "nope.pt", preset="tiny")
    assert not named.present and named.verified is False
    default = check_checkpoint(None)
    assert not default.present and default.verified is None
    assert default.path == str(cache / weights.DEFAULT_CHECKPOINT_NAME)


# -- the command --------------------------------------------------------------------------


@pytest.mark.skipif(has_gpu, reason="this machine has a GPU: the CPU-only report does not apply")
def test_doctor_on_a_cpu_only_machine_exits_zero_and_says_cpu_is_fine(run_cli):
    result = run_cli("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no GPU found; running on CPU" in result.stdout
    assert "(this is fine" in result.stdout
    assert re.search(r"^auto\s+--device auto uses cpu$", result.stdout, re.M)
    assert "not downloaded yet" in result.stdout


def test_doctor_json_has_the_fields(run_cli, tiny_checkpoint):
    result = run_cli("doctor", "--json", "--checkpoint", str(tiny_checkpoint), "--preset", "tiny")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["healthy"] is True and report["exit_code"] == 0
    expected = "cuda" if torch.cuda.is_available() else "mps" if has_gpu else "cpu"
    assert report["auto_device"] == expected
    system = report["system"]
    assert system["torch_version"] == torch.__version__
    assert system["cpu"]["threads"] >= 1 and "capability" in system["cpu"]
    for name in ("torch_cuda", "torch_hip", "gpus", "mps_available", "xpu_available", "driver"):
        assert name in system
    assert report["checkpoint"]["present"] is True and report["checkpoint"]["verified"] is True
    assert report["checkpoint"]["sha256"] == weights.sha256_file(tiny_checkpoint)
    assert report["autotune"] == []
    assert all({"level", "code", "message", "fix"} <= set(f) for f in report["findings"])


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_doctor_reports_a_corrupt_checkpoint_with_exit_4(
    run_cli, tiny_checkpoint, tmp_path, damage
):
    broken = tmp_path / "broken.pt"
    data = tiny_checkpoint.read_bytes()
    broken.write_bytes(
        b"not a checkpoint at all" if damage == "garbage" else data[: len(data) // 2]
    )
    result = run_cli("doctor", "--checkpoint", str(broken), "--preset", "tiny")
    assert result.returncode == EXIT_CHECKPOINT == 4, result.stdout + result.stderr
    assert "UNUSABLE" in result.stdout
    assert (
        f"problem  the checkpoint cannot be used: cannot read checkpoint {broken}" in result.stdout
    )
    assert "is damaged or not a SHARP checkpoint: download it again" in result.stdout
    assert "--preset" not in result.stdout.split("Next", 1)[-1]  # not a preset problem
    assert "Traceback" not in result.stderr


def test_doctor_suggests_the_preset_for_a_checkpoint_of_another_preset(run_cli, tiny_checkpoint):
    result = run_cli("doctor", "--checkpoint", str(tiny_checkpoint), "--preset", "sharp")
    assert result.returncode == EXIT_CHECKPOINT, result.stdout + result.stderr
    assert "pass the preset it was made for (--preset)" in result.stdout
    assert "damaged" not in result.stdout


def test_doctor_shows_the_cached_autotune_result(cache, tiny_checkpoint):
    probe = probe_system(query_driver=False)
    key = TuneKey(
        device="cpu",
        device_name=device_label(probe, "cpu"),
        torch=torch.__version__,
        checkpoint_sha256=weights.sha256_file(tiny_checkpoint),
        preset="tiny",
        resolution=512,
    )
    fast = RuntimeOptions(precision="bf16", channels_last=True)
    save_result(
        AutotuneResult(
            key=key,
            best=fast,
            measurements=[
                Measurement(RuntimeOptions(), reference=True, times=[2.0]),
                Measurement(fast, times=[1.0]),
            ],
            created_at="2026-11-22T10:00:00+00:00",
            runs=1,
            warmup=0,
            image="synthetic 1024x768",
        )
    )
    # An entry for another torch version is not this machine's.
    save_result(
        AutotuneResult(
            key=replace(key, torch="1.0.0"),
            best=RuntimeOptions(),
            measurements=[Measurement(RuntimeOptions(), reference=True, times=[2.0])],
            created_at="2026-11-22T09:00:00+00:00",
            runs=1,
            warmup=0,
            image="synthetic 1024x768",
        )
    )
    report = examine(tiny_checkpoint, preset="tiny", probe=probe)
    assert len(report.autotune) == 1
    tuned = report.autotune[0]
    assert tuned.best == "bf16+channels_last" and tuned.speedup == pytest.approx(2.0)
    assert tuned.matches_checkpoint and tuned.device == "cpu"
    assert not any("mlsharp autotune" in step for step in report.next_steps)
    text = format_report(report)
    assert re.search(
        r"^Autotune\s+cpu: bf16\+channels_last, 2\.00x fp32 \(tiny at 512px, 2026-11-22", text, re.M
    )


@pytest.mark.parametrize("command", ["doctor", "autotune"])
def test_help_of_the_new_commands_does_not_import_torch(command):
    import subprocess
    import sys

    code = (
        "import sys; from mlsharp.cli import main\n"
        f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"usage: mlsharp {command}" in result.stdout
