"""Loading Parakeet: where the weights are, which device, which precision.

Nothing here imports NeMo at module level, so :func:`weights_available` is
cheap enough for engine selection to call before deciding to load anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from parascribe.config import Settings
from parascribe.errors import EngineUnavailableError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16"]


def is_local_model(name: str) -> bool:
    """True when ``PARAKEET_MODEL_NAME`` names a file rather than a Hugging Face repository."""
    return name.endswith(".nemo") or name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def hf_cached_nemo(repo_id: str) -> str | None:
    """The ``.nemo`` file of ``repo_id`` in the local Hugging Face cache, without touching the network.

    NeMo's ``from_pretrained`` looks for ``<repo basename>.nemo`` in the repository;
    this checks the same file.
    """
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        path = try_to_load_from_cache(repo_id=repo_id, filename=PurePosixPath(repo_id).name + ".nemo")
    except Exception:  # an invalid repo id raises a validation error: then it is not cached
        return None
    return path if isinstance(path, str) and os.path.isfile(path) else None


def weights_available(settings: Settings) -> bool:
    """Whether Parakeet weights can be loaded here without a download.

    True when ``PARAKEET_MODEL_NAME`` is an existing local ``.nemo`` file, or a
    Hugging Face name whose ``.nemo`` is already in the local cache.
    """
    name = settings.parakeet_model_name
    if is_local_model(name):
        path = Path(name).expanduser()
        return path.is_file() and path.suffix == ".nemo"
    return hf_cached_nemo(name) is not None


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 instructions (AVX512-BF16 or AMX).

    Without them bf16 is emulated and slower than fp32, and oneDNN has no bf16
    LSTM kernel for autocast, so fp32 is the right choice.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def choose_device(setting: str) -> torch.device:
    """``ASR_DEVICE``: ``auto`` picks CUDA when there is a GPU, else the CPU.

    Raises:
        EngineUnavailableError: ``cuda`` was asked for and there is no GPU.
    """
    import torch

    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise EngineUnavailableError("ASR_DEVICE=cuda but torch sees no CUDA device")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def choose_bf16(device: torch.device, precision: Precision) -> bool:
    """Whether to run in bf16: always on a GPU, on a CPU only with native bf16 support."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        import torch

        return bool(torch.cuda.is_bf16_supported())
    return cpu_supports_bf16()


def cap_gpu_memory(device: torch.device, limit_gb: float | None) -> None:
    """Apply ``GPU_MEMORY_LIMIT_GB`` as this process's share of the device's memory."""
    if limit_gb is None or device.type != "cuda":
        return
    import torch

    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, limit_gb * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    log.info("GPU memory capped at %.1f GB (%.0f%% of %.1f GB)", limit_gb, fraction * 100, total / 2**30)


def release_host_memory() -> None:
    """Give freed heap back to the OS: ``restore_from`` leaves GBs of garbage on the CPU."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: a local ``.nemo`` or a Hugging Face repository."""

    name: str
    local: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelSource:
        name = settings.parakeet_model_name
        return cls(name=str(Path(name).expanduser()) if is_local_model(name) else name, local=is_local_model(name))

    def load(self, device: torch.device) -> Any:
        """Restore the NeMo model onto ``device``.

        Raises:
            EngineUnavailableError: NeMo is missing, the file is missing or bad, or
                the weights would need a download while ``HF_HUB_OFFLINE`` is set.
        """
        if self.local and not Path(self.name).is_file():
            raise EngineUnavailableError(f"PARAKEET_MODEL_NAME={self.name}: no such .nemo file")
        if not self.local and hf_offline() and hf_cached_nemo(self.name) is None:
            raise EngineUnavailableError(
                f"PARAKEET_MODEL_NAME={self.name} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
            )
        try:
            from nemo.collections.asr.models import ASRModel
        except ImportError as err:
            raise EngineUnavailableError(
                f"Parakeet needs NeMo (pip install 'parascribe[nemo]'): {err}"
            ) from None
        try:
            if self.local:
                model = ASRModel.restore_from(self.name, map_location=device)
            else:
                model = ASRModel.from_pretrained(self.name, map_location=device)
        except Exception as err:  # NeMo raises many types for a bad or unreachable checkpoint
            raise EngineUnavailableError(f"cannot load Parakeet from {self.name}: {type(err).__name__}: {err}") from err
        if device.type == "cpu":
            release_host_memory()
        return model
