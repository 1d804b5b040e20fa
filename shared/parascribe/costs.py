"""What each path costs, from the configured prices.

GPU cost is the L4 instance time (GPU + vCPU + memory) spent on the chunk's
processing seconds (the worker's wall time on its batch, shared by the audio each chunk sent
to the engine), so audio the VAD skips costs nothing on the GPU path; Deepgram cost is the
billed audio minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

from parascribe.config import Settings


@dataclass(frozen=True)
class Prices:
    deepgram_per_second: float
    gpu_instance_per_second: float

    @classmethod
    def from_settings(cls, s: Settings) -> Prices:
        instance = (
            s.gpu_price_per_second
            + s.gpu_instance_vcpus * s.cpu_price_per_vcpu_second
            + s.gpu_instance_memory_gib * s.memory_price_per_gib_second
        )
        return cls(deepgram_per_second=s.deepgram_price_per_minute / 60.0, gpu_instance_per_second=instance)

    def deepgram(self, audio_seconds: float) -> float:
        return audio_seconds * self.deepgram_per_second

    def gpu(self, processing_seconds: float) -> float:
        return processing_seconds * self.gpu_instance_per_second

    def gpu_estimate(self, audio_seconds: float, rtfx: float) -> float:
        return self.gpu(audio_seconds / rtfx)
