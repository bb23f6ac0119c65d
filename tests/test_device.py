"""Device names: ``auto|cpu|cuda|cuda:N|mps``, one clear error for anything else, and a GPU
index torch does not see refused before the weights are read."""

from __future__ import annotations

import pytest
import torch

from mlsharp.choices import check_device_name
from mlsharp.config import Settings
from mlsharp.device import check_gpu_index, gpu_index, resolve_device
from mlsharp.errors import ConfigError, DeviceError
from tests.service.conftest import free_port

ONE_MESSAGE = r"unknown device '.*'; choose one of auto, cpu, cuda, mps, or cuda:N"


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "mps", "cuda:0", "cuda:1", "cuda:12"])
def test_valid_device_names(name):
    assert check_device_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["cuda:", "cuda:01", "cuda:00", "cuda:-1", "cuda:+1", "cuda: 1", "cuda:1.0", "cuda:٣",
     "cpu:0", "mps:0", "gpu", "CUDA", "cuda:0:1", "", "cuda:1000", "cuda:" + "9" * 5000],
)  # fmt: skip
def test_malformed_device_names_get_one_clear_error(name):
    with pytest.raises(ValueError, match=ONE_MESSAGE):
        check_device_name(name)
    with pytest.raises(ConfigError, match=ONE_MESSAGE):
        resolve_device(name)
    with pytest.raises(ConfigError, match="unknown device"):
        Settings.load(None, device=name)


def test_gpu_index_must_be_one_torch_sees():
    check_gpu_index(0, 1)
    check_gpu_index(1, 2)
    with pytest.raises(DeviceError, match=r"'cuda:7' requested but torch sees 2 GPUs"):
        check_gpu_index(7, 2)
    with pytest.raises(DeviceError, match=r"sees 1 GPU \(only cuda:0\)"):
        check_gpu_index(1, 1)
    with pytest.raises(DeviceError, match="CUDA_VISIBLE_DEVICES"):
        check_gpu_index(0, 0)


@pytest.mark.parametrize("name", [f"cuda:{torch.cuda.device_count()}", "cuda:256"])
def test_gpu_index_beyond_the_visible_gpus_is_a_device_error(name):
    # Without CUDA this is the "no GPU" error; with it, the index check above. torch.device
    # wraps the index at 256, so cuda:256 would otherwise quietly be cuda:0.
    with pytest.raises(DeviceError, match="cuda"):
        resolve_device(name)


def test_gpu_index_is_read_from_the_name_not_torchs_8_bit_field():
    assert torch.device("cuda:256").index == 0  # why we parse it ourselves
    assert [gpu_index(n) for n in ("cuda:256", "cuda:300", "cuda:3", "cuda", "cpu")] == [
        256, 300, 3, None, None,
    ]  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cli_bad_device_is_one_line(run_cli, tiny_checkpoint):
    model = ("--checkpoint", str(tiny_checkpoint), "--preset", "tiny", "--offline")
    for name, code in (("cuda:01", 2), ("cuda:", 2), ("cuda:7", 5)):
        port = str(free_port())
        result = run_cli("serve", "--device", name, "--port", port, *model)
        assert result.returncode == code, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 3  # usage + the one error line
        assert "device" in result.stderr.strip().splitlines()[-1]
