"""What compute devices this machine has, what torch sees, and why a GPU may go unused.

Two steps, kept apart so the advice logic can be tested without the hardware:

* :func:`probe_system` gathers facts from torch's own APIs (``torch.version.cuda`` /
  ``torch.version.hip`` tell CUDA from ROCm, ``torch.cuda.get_device_capability``,
  ``torch.cuda.get_arch_list``, ``torch.backends.mps``, ``torch.xpu``,
  ``torch.cpu.get_capabilities``) plus a few operating-system hints that a GPU exists
  even when torch cannot use it (``/dev/nvidia0``, ``/dev/kfd``, ``nvidia-smi``,
  ``rocm-smi``). Nothing is guessed from device-name substrings.
* :func:`diagnose` turns a :class:`SystemProbe` (real or constructed by a test) into
  :class:`Finding` s: "GPU usable", "CPU only, which is fine", or a problem with the exact
  fix (e.g. the pip command that installs a CUDA build of torch).

Every dataclass here is JSON-able through :func:`dataclasses.asdict`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "CUDA_WHEEL_INDEX",
    "ROCM_WHEEL_INDEX",
    "CpuInfo",
    "DriverInfo",
    "Finding",
    "GpuDevice",
    "SystemProbe",
    "arch_supported",
    "auto_device",
    "device_label",
    "diagnose",
    "probe_system",
    "torch_install_command",
]

#: PyTorch's wheel index for CUDA builds suggested to users. CUDA 12.8 is the first
#: toolkit with Blackwell (RTX 50, compute capability 12.0) kernels and runs on drivers
#: >= 570; users with older drivers pick another index on pytorch.org.
CUDA_WHEEL_INDEX = "https://download.pytorch.org/whl/cu128"
#: PyTorch's wheel index for ROCm builds (Linux only).
ROCM_WHEEL_INDEX = "https://download.pytorch.org/whl/rocm6.4"
INSTALL_PAGE = "https://pytorch.org/get-started/locally/"

#: Seconds a vendor tool (nvidia-smi, rocm-smi) may take before it is given up on.
DRIVER_QUERY_TIMEOUT = 5.0

# CPU feature flags worth showing (torch.cpu.get_capabilities() names).
_SHOWN_CPU_FLAGS = (
    "avx2",
    "avx512_f",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_fp16",
    "neon",
    "bf16",
    "fp16_arith",
    "sve",
    "sve2",
)
# Flags meaning the CPU computes bf16 natively (x86 AVX512-BF16 / AMX, Arm BF16 / SVE-BF16).
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")

Level = Literal["ok", "info", "problem"]


@dataclass(frozen=True)
class GpuDevice:
    """One GPU as torch sees it (CUDA or ROCm, both through ``torch.cuda``).

    Attributes:
        index: torch device index (``cuda:<index>``).
        name: the marketing name torch reports (shown only, never parsed).
        backend: ``cuda`` (NVIDIA) or ``rocm`` (AMD via HIP).
        arch: ``sm_XY`` on CUDA, the gfx target (e.g. ``gfx90a``) on ROCm.
        capability: CUDA compute capability ``[major, minor]``; ``None`` on ROCm.
        total_memory: bytes.
        free_memory: bytes free right now, when NVML (nvidia-ml-py) or amd-smi can tell
            without a CUDA context; else ``None``.
        multiprocessors: SMs / CUs.
        bf16: computes bf16 natively (:func:`~mlsharp.runtime.precision.cuda_bf16_native`).
        tf32: TF32 tensor cores (CUDA compute capability >= 8.0).
        supported_by_build: whether this torch build ships kernels for ``arch``
            (``torch.cuda.get_arch_list``); ``None`` when the build does not say.
    """

    index: int
    name: str
    backend: Literal["cuda", "rocm"]
    arch: str
    capability: tuple[int, int] | None
    total_memory: int
    free_memory: int | None = None
    multiprocessors: int | None = None
    bf16: bool = False
    tf32: bool = False
    supported_by_build: bool | None = None


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as torch sees it.

    Attributes:
        name: CPU model name (from cpuinfo via torch, else ``platform.processor()``).
        architecture: ``x86_64``, ``arm64`` ...
        threads: intra-op threads torch uses (``torch.get_num_threads()``).
        logical_cores: ``os.cpu_count()``.
        capability: the SIMD level torch dispatches to (``DEFAULT``, ``AVX2``, ``AVX512``...).
        flags: notable instruction-set flags present (see ``_SHOWN_CPU_FLAGS``).
        bf16_native: the CPU computes bf16 in hardware; ``None`` when torch cannot tell.
    """

    name: str = ""
    architecture: str = ""
    threads: int = 1
    logical_cores: int | None = None
    capability: str = "DEFAULT"
    flags: tuple[str, ...] = ()
    bf16_native: bool | None = None


@dataclass(frozen=True)
class DriverInfo:
    """What the vendor tool reports (optional: the tool may be absent or slow).

    Attributes:
        tool: ``nvidia-smi`` or ``rocm-smi``.
        driver_version: e.g. ``570.86.15``.
        gpus: device names the driver lists (whether or not torch can use them).
        error: why the query failed, if it did.
    """

    tool: str
    driver_version: str | None = None
    gpus: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class SystemProbe:
    """Every fact :func:`diagnose` needs. The defaults describe a bare CPU-only machine,
    so a test states only the facts it is about."""

    python: str = platform.python_version()
    executable: str = sys.executable  # the interpreter running mlsharp (for fix commands)
    system: str = platform.system()  # Linux, Windows, Darwin
    machine: str = platform.machine()  # x86_64, AMD64, arm64, aarch64
    torch_version: str = "unknown"
    torch_cuda: str | None = None  # torch.version.cuda: the CUDA toolkit torch was built with
    torch_hip: str | None = None  # torch.version.hip: the HIP (ROCm) version torch was built with
    cudnn_version: int | None = None
    arch_list: tuple[str, ...] = ()  # torch.cuda.get_arch_list()
    cuda_available: bool = False
    cuda_unavailable_reason: str | None = None  # torch's warning when is_available() is False
    visible_devices: dict[str, str] = field(default_factory=dict)  # CUDA_/HIP_VISIBLE_DEVICES
    gpus: tuple[GpuDevice, ...] = ()
    mps_built: bool = False
    mps_available: bool = False
    mps_recommended_memory: int | None = None
    xpu_available: bool = False
    xpu_devices: tuple[str, ...] = ()
    cpu: CpuInfo = field(default_factory=CpuInfo)
    nvidia_device_nodes: bool = False  # /dev/nvidia0 or /dev/nvidiactl exists
    amd_kfd: bool = False  # /dev/kfd exists (the ROCm compute interface)
    wsl_gpu: bool = False  # /dev/dxg: a GPU passed through to WSL 2
    nvidia_smi: str | None = None  # path of the tool, if on PATH
    rocm_smi: str | None = None
    rosetta: bool = False  # an x86_64 Python translated by Rosetta on Apple silicon
    driver: DriverInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return asdict(self)


@dataclass(frozen=True)
class Finding:
    """One conclusion about the machine.

    Attributes:
        level: ``ok`` (healthy), ``info`` (worth knowing) or ``problem`` (a GPU that is
            there but cannot be used; ``mlsharp doctor`` exits non-zero).
        code: stable identifier, e.g. ``cpu_only_torch``.
        message: one or two sentences for the user.
        fix: what to run or change, if anything.
    """

    level: Level
    code: str
    message: str
    fix: str | None = None


# --------------------------------------------------------------------------------------
# Probing (imports torch)
# --------------------------------------------------------------------------------------


def probe_system(*, query_driver: bool = True) -> SystemProbe:
    """Collect the facts about this machine from torch and the operating system.

    ``query_driver`` runs ``nvidia-smi`` / ``rocm-smi`` (if on PATH) with a
    :data:`DRIVER_QUERY_TIMEOUT` for the driver version. Initialises torch's CUDA runtime
    when torch was built with it, but creates no context on any GPU (see :func:`_gpus`).
    """
    import torch

    cuda_available, reason = _cuda_available(torch)
    arch_list: tuple[str, ...] = ()
    if torch.version.cuda or torch.version.hip:
        with contextlib.suppress(Exception):  # older builds raise when no driver is found
            arch_list = tuple(torch.cuda.get_arch_list())
    gpus = _gpus(torch, arch_list) if cuda_available else ()
    mps = getattr(torch.backends, "mps", None)
    mps_built = bool(mps is not None and mps.is_built())
    mps_available = bool(mps is not None and mps.is_available())
    mps_memory = None
    if mps_available:
        with contextlib.suppress(Exception):
            mps_memory = int(torch.mps.recommended_max_memory())
    xpu_devices = _xpu_devices(torch)
    cudnn = None
    if torch.version.cuda:
        with contextlib.suppress(Exception):
            cudnn = torch.backends.cudnn.version()
    nvidia_smi = _which("nvidia-smi", extra=("/usr/lib/wsl/lib/nvidia-smi",))
    rocm_smi = _which("rocm-smi", extra=("/opt/rocm/bin/rocm-smi",))
    driver = None
    if query_driver:
        if nvidia_smi:
            driver = _query_nvidia_smi(nvidia_smi)
        elif rocm_smi:
            driver = _query_rocm_smi(rocm_smi)
    return SystemProbe(
        torch_version=str(torch.__version__),
        torch_cuda=torch.version.cuda,
        torch_hip=getattr(torch.version, "hip", None),
        cudnn_version=cudnn,
        arch_list=arch_list,
        cuda_available=cuda_available,
        cuda_unavailable_reason=reason,
        visible_devices={
            k: os.environ[k]
            for k in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
            if k in os.environ
        },
        gpus=gpus,
        mps_built=mps_built,
        mps_available=mps_available,
        mps_recommended_memory=mps_memory,
        xpu_available=bool(xpu_devices),
        xpu_devices=xpu_devices,
        cpu=_cpu_info(torch),
        nvidia_device_nodes=os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl"),
        amd_kfd=os.path.exists("/dev/kfd"),
        wsl_gpu=os.path.exists("/dev/dxg"),
        nvidia_smi=nvidia_smi,
        rocm_smi=rocm_smi,
        rosetta=_under_rosetta(),
        driver=driver,
    )


def _cuda_available(torch: Any) -> tuple[bool, str | None]:
    """``torch.cuda.is_available()`` plus torch's own explanation when it is False.

    torch explains a failed CUDA initialisation (driver too old, no device, init error)
    in a ``UserWarning`` that it emits once; capture it instead of letting it print.
    """
    if not (torch.version.cuda or getattr(torch.version, "hip", None)):
        return False, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = bool(torch.cuda.is_available())
        count = torch.cuda.device_count() if available else 0
    if available and count > 0:
        return True, None
    reason = next((str(w.message).strip() for w in caught), None)
    return False, reason.splitlines()[0] if reason else None


def _free_memory_nvml(torch: Any, index: int, total: int) -> int | None:
    """Free bytes of GPU ``index`` from NVML / amd-smi (``torch.cuda.device_memory_used``),
    which needs no CUDA context; ``None`` when that library is not installed."""
    try:
        return max(0, total - int(torch.cuda.device_memory_used(index)))
    except Exception:  # nvidia-ml-py / amdsmi missing, or the query failed: unknown
        return None


def _gpus(torch: Any, arch_list: tuple[str, ...]) -> tuple[GpuDevice, ...]:
    """Every visible GPU from its properties, without creating a CUDA context on it.

    ``torch.cuda.mem_get_info`` and ``torch.cuda.device(i)`` (``cudaSetDevice``) would
    each create a context (hundreds of MB of GPU memory, seconds of start-up) on every
    visible GPU, also on GPUs other processes are using; properties and NVML do not.
    """
    from mlsharp.runtime.precision import cuda_bf16_native

    rocm = bool(getattr(torch.version, "hip", None))
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        free = _free_memory_nvml(torch, index, int(props.total_memory))
        bf16 = cuda_bf16_native((int(props.major), int(props.minor)), torch.version.hip)
        if rocm:
            # gcnArchName is e.g. "gfx90a:sramecc+:xnack-": the target is before the colon.
            arch = str(getattr(props, "gcnArchName", "")).split(":", 1)[0]
            capability = None
        else:
            capability = (int(props.major), int(props.minor))
            arch = f"sm_{props.major}{props.minor}"
        devices.append(
            GpuDevice(
                index=index,
                name=str(props.name),
                backend="rocm" if rocm else "cuda",
                arch=arch,
                capability=capability,
                total_memory=int(props.total_memory),
                free_memory=free,
                multiprocessors=int(getattr(props, "multi_processor_count", 0)) or None,
                bf16=bf16,
                # TF32 tensor cores arrived with Ampere (8.0); ROCm has no TF32 switch here.
                tf32=capability is not None and capability >= (8, 0),
                supported_by_build=arch_supported(arch, capability, arch_list),
            )
        )
    return tuple(devices)


def arch_supported(
    arch: str, capability: tuple[int, int] | None, arch_list: tuple[str, ...]
) -> bool | None:
    """Whether a torch build compiled for ``arch_list`` can run on this GPU.

    CUDA: a cubin for ``sm_Xy`` runs on devices of the same major version with minor >= y,
    and PTX (``compute_XY``) is JIT-compiled for any device of capability >= XY. ROCm:
    the gfx target must be in the list. ``None`` when the list is empty (unknown).
    """
    if not arch_list:
        return None
    if capability is None:  # ROCm
        return any(entry.split(":", 1)[0] == arch for entry in arch_list)
    for entry in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", entry)
        if not match:
            continue
        kind, major, minor = match.group(1), int(match.group(2)), int(match.group(3))
        if kind == "sm" and major == capability[0] and minor <= capability[1]:
            return True
        if kind == "compute" and (major, minor) <= capability:
            return True
    return False


def _xpu_devices(torch: Any) -> tuple[str, ...]:
    xpu = getattr(torch, "xpu", None)
    if xpu is None:
        return ()
    try:
        if not xpu.is_available():
            return ()
        return tuple(str(xpu.get_device_name(i)) for i in range(xpu.device_count()))
    except Exception:  # an XPU runtime that fails to initialise is the same as none here
        return ()


def _cpu_info(torch: Any) -> CpuInfo:
    capability = "DEFAULT"
    with contextlib.suppress(Exception):
        capability = str(torch.backends.cpu.get_cpu_capability())
    caps: dict[str, Any] = {}
    get_capabilities = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get_capabilities is not None:  # torch >= 2.10
        with contextlib.suppress(Exception):
            caps = dict(get_capabilities())
    flags = tuple(name for name in _SHOWN_CPU_FLAGS if caps.get(name) is True)
    bf16: bool | None = None
    if caps:
        bf16 = any(caps.get(name) is True for name in _CPU_BF16_FLAGS)
    else:
        probe = getattr(getattr(torch, "cpu", None), "_is_avx512_bf16_supported", None)
        if probe is not None:
            with contextlib.suppress(Exception):
                bf16 = bool(probe())
    return CpuInfo(
        name=str(caps.get("cpu_name") or platform.processor() or ""),
        architecture=str(caps.get("architecture") or platform.machine()),
        threads=int(torch.get_num_threads()),
        logical_cores=os.cpu_count(),
        capability=capability,
        flags=flags,
        bf16_native=bf16,
    )


def _which(tool: str, *, extra: tuple[str, ...] = ()) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    return next((path for path in extra if os.access(path, os.X_OK)), None)


def _run_tool(argv: list[str]) -> tuple[str | None, str | None]:
    """Run a vendor tool briefly; return (stdout, error)."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=DRIVER_QUERY_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return None, f"{os.path.basename(argv[0])} did not answer within {DRIVER_QUERY_TIMEOUT:g} s"
    except OSError as e:
        return None, f"{os.path.basename(argv[0])} could not run: {e.strerror or e}"
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).strip().splitlines()
        detail = lines[0] if lines else f"exit status {done.returncode}"
        return None, f"{os.path.basename(argv[0])} failed: {detail}"
    return done.stdout, None


def _query_nvidia_smi(tool: str) -> DriverInfo:
    out, error = _run_tool(
        [tool, "--query-gpu=name,driver_version", "--format=csv,noheader,nounits"]
    )
    if out is None:
        return DriverInfo(tool="nvidia-smi", error=error)
    rows = [[part.strip() for part in line.split(",")] for line in out.strip().splitlines()]
    rows = [row for row in rows if len(row) >= 2]
    return DriverInfo(
        tool="nvidia-smi",
        driver_version=rows[0][1] if rows else None,
        gpus=tuple(row[0] for row in rows),
    )


def _query_rocm_smi(tool: str) -> DriverInfo:
    out, error = _run_tool([tool, "--showdriverversion", "--showproductname", "--json"])
    if out is None:
        return DriverInfo(tool="rocm-smi", error=error)
    try:
        data = json.loads(out)
    except ValueError:
        return DriverInfo(tool="rocm-smi", error="rocm-smi printed no JSON")
    version = None
    names = []
    # Layout: {"card0": {"Card series": ...}, "system": {"Driver version": ...}}; the key
    # spellings vary between ROCm releases, so match them loosely.
    for section in data.values() if isinstance(data, dict) else ():
        if not isinstance(section, dict):
            continue
        for key, value in section.items():
            lowered = key.lower()
            if "driver version" in lowered and version is None:
                version = str(value)
            elif lowered in ("card series", "card model", "marketing name"):
                names.append(str(value))
    return DriverInfo(tool="rocm-smi", driver_version=version, gpus=tuple(names[:16]))


def _under_rosetta() -> bool:
    """True for an x86_64 Python translated by Rosetta 2 on an Apple-silicon Mac."""
    if sys.platform != "darwin" or platform.machine() != "x86_64":
        return False
    out, _ = _run_tool(["sysctl", "-n", "sysctl.proc_translated"])
    return (out or "").strip() == "1"


# --------------------------------------------------------------------------------------
# Diagnosis (pure: facts in, findings out)
# --------------------------------------------------------------------------------------


def auto_device(probe: SystemProbe) -> str:
    """The device ``--device auto`` picks (as :func:`mlsharp.device.resolve_device` does)."""
    if probe.cuda_available and probe.gpus:
        return "cuda"
    if probe.mps_available:
        return "mps"
    return "cpu"


def torch_install_command(probe: SystemProbe, flavour: Literal["cuda", "rocm"]) -> str:
    """The commands that replace the installed torch with a CUDA or ROCm build of the same
    version (uninstall first: pip would otherwise keep the installed CPU build), in the
    syntax of the user's shell (PowerShell on Windows, see :func:`shell_and`)."""
    version = probe.torch_version.split("+", 1)[0]
    index = CUDA_WHEEL_INDEX if flavour == "cuda" else ROCM_WHEEL_INDEX
    python = _python_command(probe)
    pin = f'"torch=={version}"' if re.fullmatch(r"\d+(\.\d+)*", version) else "torch"
    return shell_and(
        probe,
        f"{python} -m pip uninstall -y torch",
        f"{python} -m pip install {pin} --index-url {index}",
    )


def shell_and(probe: SystemProbe, *commands: str) -> str:
    """Commands run one after the other, each only if the previous one succeeded, in the
    user's shell: ``a && b`` (POSIX shells, PowerShell 7) or, on Windows, the form that
    Windows PowerShell 5.1 also understands (it has no ``&&``): ``a; if ($?) { b }``."""
    if probe.system != "Windows":
        return " && ".join(commands)
    first, *rest = commands
    return first + "".join(f"; if ($?) {{ {command} }}" for command in rest)


def _python_command(probe: SystemProbe) -> str:
    """How to call the Python that runs mlsharp: ``python`` on POSIX; on Windows its full
    path through PowerShell's call operator, so the fix lands in this environment even when
    the venv is not activated (``py`` would pick the system's Python)."""
    if probe.system != "Windows" or not probe.executable:
        return "python"
    return "& '" + probe.executable.replace("'", "''") + "'"


def unset_variable_command(probe: SystemProbe, name: str) -> str:
    """The command that removes environment variable ``name`` in the user's shell."""
    return f"Remove-Item Env:{name}" if probe.system == "Windows" else f"unset {name}"


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def diagnose(probe: SystemProbe) -> list[Finding]:
    """Conclusions about the machine, problems first.

    A ``problem`` is a GPU that is present but that torch cannot use (and so mlsharp would
    silently run on the CPU, or fail on the GPU). A machine without any GPU gets an ``ok``
    finding that says the CPU is fine.
    """
    findings: list[Finding] = []
    findings += _usable_gpu_findings(probe)
    if not (probe.cuda_available and probe.gpus):
        findings += _nvidia_findings(probe)
        findings += _amd_findings(probe)
    findings += _apple_findings(probe)
    if probe.xpu_available:
        findings.append(
            Finding(
                "info",
                "xpu_unused",
                f"Intel XPU found ({', '.join(probe.xpu_devices)}); mlsharp does not run on "
                "XPU yet and uses the CPU instead.",
            )
        )
    if auto_device(probe) == "cpu" and not any(f.level == "problem" for f in findings):
        cpu = probe.cpu
        findings.append(
            Finding(
                "ok",
                "cpu_only",
                f"no GPU found; running on CPU: {cpu.threads} threads, {cpu.capability} "
                "(this is fine: every feature works, a photo just takes longer).",
            )
        )
    order = {"problem": 0, "info": 1, "ok": 2}
    return sorted(findings, key=lambda f: order[f.level])


def _usable_gpu_findings(probe: SystemProbe) -> list[Finding]:
    findings = []
    if probe.cuda_available and probe.gpus:
        kind = "ROCm" if probe.torch_hip else "CUDA"
        usable = [g for g in probe.gpus if g.supported_by_build is not False]
        for gpu in probe.gpus:
            if gpu.supported_by_build is False:
                built = ", ".join(probe.arch_list) or "unknown"
                findings.append(
                    Finding(
                        "problem",
                        "gpu_arch_unsupported",
                        f"GPU {gpu.index} ({gpu.name}, {gpu.arch}) is newer than the kernels in "
                        f"this torch {probe.torch_version} (built for {built}); it cannot run "
                        f"mlsharp's network.",
                        "install a torch build made with a newer "
                        + ("ROCm" if gpu.backend == "rocm" else "CUDA (12.8+ for RTX 50)")
                        + ": "
                        + torch_install_command(probe, "rocm" if gpu.backend == "rocm" else "cuda"),
                    )
                )
        if usable:
            names = ", ".join(f"{g.name} ({_gib(g.total_memory)})" for g in usable)
            findings.append(Finding("ok", "gpu_ok", f"{kind} GPU usable: {names}."))
    elif probe.mps_available:
        findings.append(Finding("ok", "mps_ok", "Apple GPU usable through MPS."))
    return findings


def _hidden_by(probe: SystemProbe, *names: str) -> str | None:
    """The ``*_VISIBLE_DEVICES`` setting that hides every GPU, if any."""
    for name in names:
        value = probe.visible_devices.get(name)
        if value is not None and value.strip() in ("", "-1", "none", "void", "NoDevFiles"):
            return f"{name}={value!r}"
    return None


def _nvidia_findings(probe: SystemProbe) -> list[Finding]:
    driver_lists_gpu = bool(
        probe.driver and probe.driver.tool == "nvidia-smi" and probe.driver.gpus
    )
    # nvidia-smi alone may be a leftover install on a machine without a GPU, so it counts
    # only when it lists a GPU; except on Windows and WSL (no /dev/nvidia* nodes there)
    # when it was not queried at all.
    unqueried_tool = (
        probe.nvidia_smi is not None
        and probe.driver is None
        and (probe.system == "Windows" or probe.wsl_gpu)
    )
    if not (probe.nvidia_device_nodes or driver_lists_gpu or unqueried_tool):
        return []
    evidence = _nvidia_evidence(probe)
    if probe.torch_cuda is None and probe.torch_hip is None:
        fix = torch_install_command(probe, "cuda")
        if probe.system == "Windows":
            fix += (
                "  (on Windows, `pip install torch` from PyPI always installs the CPU-only "
                "build; the CUDA builds come only from the PyTorch index)"
            )
        fix += f"; other CUDA versions: {INSTALL_PAGE}"
        return [
            Finding(
                "problem",
                "cpu_only_torch",
                f"an NVIDIA GPU is present ({evidence}) but the installed torch "
                f"{probe.torch_version} is a CPU-only build, so mlsharp runs on the CPU.",
                fix,
            )
        ]
    if probe.torch_hip is not None:
        return [
            Finding(
                "problem",
                "rocm_torch_on_nvidia",
                f"an NVIDIA GPU is present ({evidence}) but the installed torch "
                f"{probe.torch_version} is a ROCm (AMD) build.",
                torch_install_command(probe, "cuda"),
            )
        ]
    hidden = _hidden_by(probe, "CUDA_VISIBLE_DEVICES")
    if hidden:
        return [
            Finding(
                "problem",
                "cuda_hidden",
                f"an NVIDIA GPU is present ({evidence}) but {hidden} hides it from torch.",
                f"`{unset_variable_command(probe, 'CUDA_VISIBLE_DEVICES')}`, or set it to the "
                "GPU index to use (e.g. 0)",
            )
        ]
    why = f" torch says: {probe.cuda_unavailable_reason}" if probe.cuda_unavailable_reason else ""
    driver = probe.driver.driver_version if probe.driver else None
    return [
        Finding(
            "problem",
            "cuda_unavailable",
            f"an NVIDIA GPU is present ({evidence}) and torch {probe.torch_version} was built "
            f"with CUDA {probe.torch_cuda}, but torch cannot use it.{why}",
            f"the NVIDIA driver{f' ({driver})' if driver else ''} may be too old for CUDA "
            f"{probe.torch_cuda}: update it, or install a torch built for an older CUDA "
            f"({INSTALL_PAGE}); or this user lacks access to /dev/nvidia* (in a container, "
            "start it with --gpus all / the NVIDIA container runtime)",
        )
    ]


def _nvidia_evidence(probe: SystemProbe) -> str:
    if probe.driver and probe.driver.gpus:
        names = ", ".join(probe.driver.gpus)
        version = f", driver {probe.driver.driver_version}" if probe.driver.driver_version else ""
        return f"nvidia-smi lists {names}{version}"
    if probe.nvidia_device_nodes:
        return "/dev/nvidia0 exists"
    return f"{probe.nvidia_smi} is installed"


def _amd_findings(probe: SystemProbe) -> list[Finding]:
    if not probe.amd_kfd:
        return []
    evidence = "/dev/kfd exists"
    if probe.driver and probe.driver.tool == "rocm-smi" and probe.driver.gpus:
        evidence = f"rocm-smi lists {', '.join(probe.driver.gpus)}"
    if probe.torch_hip is None:
        return [
            Finding(
                "problem",
                "non_rocm_torch",
                f"an AMD GPU is present ({evidence}) but the installed torch "
                f"{probe.torch_version} is not a ROCm build, so mlsharp runs on the CPU.",
                torch_install_command(probe, "rocm") + f" (Linux only; see {INSTALL_PAGE})",
            )
        ]
    hidden = _hidden_by(probe, "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
    if hidden:
        return [
            Finding(
                "problem",
                "rocm_hidden",
                f"an AMD GPU is present ({evidence}) but {hidden} hides it from torch.",
                "unset the variable or set it to the GPU index to use (e.g. 0)",
            )
        ]
    why = f" torch says: {probe.cuda_unavailable_reason}" if probe.cuda_unavailable_reason else ""
    return [
        Finding(
            "problem",
            "rocm_unavailable",
            f"an AMD GPU is present ({evidence}) and torch {probe.torch_version} was built with "
            f"ROCm/HIP {probe.torch_hip}, but torch cannot use it.{why}",
            "check that this user may open /dev/kfd and /dev/dri/renderD* (groups `render` and "
            "`video`; in a container pass --device /dev/kfd --device /dev/dri) and that the "
            "amdgpu driver matches the ROCm version",
        )
    ]


def _apple_findings(probe: SystemProbe) -> list[Finding]:
    if probe.system != "Darwin" or probe.mps_available:
        return []
    if probe.rosetta:
        return [
            Finding(
                "problem",
                "rosetta_python",
                "this Python is an x86_64 build running under Rosetta on Apple silicon, so "
                "torch cannot use the Apple GPU (MPS).",
                "install an arm64 (native) Python, then `python -m pip install torch` in it",
            )
        ]
    if probe.machine != "arm64":
        return []  # an Intel Mac: no MPS-capable GPU to miss
    if not probe.mps_built:
        return [
            Finding(
                "problem",
                "mps_not_built",
                f"this is an Apple-silicon Mac but torch {probe.torch_version} was built "
                "without MPS support.",
                "python -m pip uninstall -y torch && python -m pip install torch",
            )
        ]
    return [
        Finding(
            "problem",
            "mps_unavailable",
            "this is an Apple-silicon Mac and torch has MPS support, but MPS is not available.",
            "MPS needs macOS 12.3 or newer; update macOS",
        )
    ]


def device_label(probe: SystemProbe, device: str) -> str:
    """A stable human name for ``device`` (``cpu``, ``cuda:N``, ``mps``) on this machine,
    used in the autotune cache key: the GPU model and architecture, or the CPU model
    with its thread count (which changes what is fastest)."""
    kind, _, index = device.partition(":")
    if kind == "cuda":
        wanted = int(index or 0)
        gpu = next((g for g in probe.gpus if g.index == wanted), None)
        return f"{gpu.name} ({gpu.arch})" if gpu else f"cuda:{wanted}"
    if kind == "mps":
        return f"Apple MPS ({probe.machine})"
    cpu = probe.cpu
    return f"{cpu.name or cpu.architecture or 'CPU'} ({cpu.threads} threads, {cpu.capability})"
