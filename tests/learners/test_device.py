import pytest
import torch

from learners import DeviceUnavailable, resolve_device


def test_auto_is_cpu_without_gpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(" CPU ").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("setting", ["cuda", "cuda:0"])
def test_cuda_without_gpu_raises_clear_error(setting):
    with pytest.raises(DeviceUnavailable, match=r"device setting is .*cuda.*no CUDA"):
        resolve_device(setting)


def test_unknown_setting_rejected():
    with pytest.raises(ValueError, match="auto"):
        resolve_device("tpu")
