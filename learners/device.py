"""Device selection: one setting, ``auto | cpu | cuda``."""

from __future__ import annotations

import torch

from learners.exceptions import DeviceUnavailable

DEVICE_SETTINGS = ("auto", "cpu", "cuda")


def resolve_device(setting: str = "auto") -> torch.device:
    """Turn the ``device`` setting into a :class:`torch.device`.

    ``auto`` picks CUDA when a GPU is visible, else the CPU; ``cuda`` (or
    ``cuda:N``) without a GPU raises :class:`DeviceUnavailable` naming the
    setting rather than failing later inside torch.

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("auto").type in ("cpu", "cuda")
    True
    """
    if isinstance(setting, torch.device):
        setting = str(setting)
    value = str(setting).strip().lower()
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value == "cpu":
        return torch.device("cpu")
    if value == "cuda" or value.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                f"device setting is {setting!r} but no CUDA device is available "
                f"(torch {torch.__version__}, cuda build: {torch.version.cuda}); "
                "set device = \"auto\" or \"cpu\""
            )
        dev = torch.device(value)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"device setting is {setting!r} but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible"
            )
        return dev
    raise ValueError(f"device setting must be one of {DEVICE_SETTINGS}, got {setting!r}")
