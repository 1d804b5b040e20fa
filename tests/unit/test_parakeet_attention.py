"""AttentionPlanner: which chunks run with full attention, and in sub-batches that fit memory."""

from __future__ import annotations

import pytest

from parascribe.audio import SAMPLE_RATE
from parascribe.config import load_settings
from parascribe.engines.parakeet.attention import (
    CPU_LOCAL_ATTENTION_S,
    GPU_LOCAL_ATTENTION_S,
    AttentionPlanner,
    Group,
    long_audio_threshold,
)

MIN = 60 * SAMPLE_RATE
PARAKEET_BF16 = {"heads": 8, "samples_per_frame": 160 * 8, "element_bytes": 2}


def _planner(threshold_s: float = 900.0, budget: int | None = None) -> AttentionPlanner:
    return AttentionPlanner(long_samples=int(threshold_s * SAMPLE_RATE), budget_bytes=budget, **PARAKEET_BF16)


def test_default_threshold_depends_on_the_device_and_a_setting_wins() -> None:
    assert load_settings().long_audio_threshold_seconds is None
    assert long_audio_threshold(None, "cpu") == CPU_LOCAL_ATTENTION_S == 30.0
    assert long_audio_threshold(None, "cuda") == GPU_LOCAL_ATTENTION_S == 900.0
    assert long_audio_threshold(120.0, "cpu") == long_audio_threshold(120.0, "cuda") == 120.0


def test_ten_minute_chunk_scores_take_gigabytes_in_bf16() -> None:
    planner = _planner()
    assert planner.frames(10 * MIN) == 7500  # one encoder frame per 80 ms
    # 8 score tensors x 8 heads x 7500^2 x 2 bytes: why an L4 (24 GB) cannot hold 16 such chunks at once.
    assert planner.full_attention_bytes(10 * MIN) == 8 * 8 * 7500**2 * 2
    assert planner.full_attention_bytes(10 * MIN, batch=16) > 24 * 2**30


def test_without_a_budget_long_chunks_go_local_and_the_rest_run_as_one_batch() -> None:
    lengths = [2 * MIN, 20 * MIN, 0, 10 * MIN, 16 * MIN, 5 * MIN]
    assert _planner(900.0).plan(lengths) == [Group(local=True, ids=[1, 4]), Group(local=False, ids=[3, 5, 0])]


def test_everything_short_is_one_full_batch_longest_first() -> None:
    assert _planner(900.0).plan([MIN, 3 * MIN, 2 * MIN]) == [Group(local=False, ids=[1, 2, 0])]


def test_empty_and_silent_batches_plan_nothing() -> None:
    assert _planner().plan([]) == []
    assert _planner().plan([0, 0]) == []


def test_budget_cuts_full_attention_into_sub_batches_that_fit() -> None:
    planner = _planner(900.0)
    budget = planner.full_attention_bytes(10 * MIN, batch=2)  # two 10-minute chunks at a time
    planner = _planner(900.0, budget)
    lengths = [10 * MIN, 10 * MIN, 10 * MIN, 9 * MIN, 2 * MIN, MIN, MIN]
    groups = planner.plan(lengths)
    assert groups == [Group(False, [0, 1]), Group(False, [2, 3]), Group(False, [4, 5, 6])]
    for group in groups:
        assert planner.full_attention_bytes(lengths[group.ids[0]], len(group.ids)) <= budget
    assert sorted(i for g in groups for i in g.ids) == list(range(len(lengths))), "every chunk exactly once"


def test_chunk_that_does_not_fit_alone_runs_with_local_attention() -> None:
    planner = _planner(900.0)
    budget = planner.full_attention_bytes(5 * MIN)
    planner = _planner(900.0, budget)
    assert planner.is_local(6 * MIN) and not planner.is_local(5 * MIN)
    assert planner.plan([6 * MIN, 5 * MIN, 4 * MIN]) == [Group(True, [0]), Group(False, [1]), Group(False, [2])]


def test_for_model_reads_the_nemo_config() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"encoder": {"n_heads": 4, "subsampling_factor": 8},
                            "preprocessor": {"window_stride": 0.01}})
    model = type("Model", (), {"cfg": cfg})()
    planner = AttentionPlanner.for_model(model, threshold_s=30.0, bf16=False, budget_bytes=None)
    assert planner == AttentionPlanner(long_samples=30 * SAMPLE_RATE, heads=4, samples_per_frame=1280,
                                       element_bytes=4, budget_bytes=None)


@pytest.mark.parametrize("threshold", [0.0, -1.0])
def test_threshold_setting_must_be_positive(threshold: float) -> None:
    from parascribe.errors import ConfigError

    with pytest.raises(ConfigError, match="LONG_AUDIO_THRESHOLD_SECONDS"):
        load_settings(long_audio_threshold_seconds=threshold)


def test_gpu_budget_is_a_share_of_free_memory_within_the_process_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The arithmetic of ``gpu_attention_budget``, with the CUDA queries stubbed (no GPU here)."""
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'parascribe[nemo]')")
    from parascribe.engines.parakeet.attention import GPU_BUDGET_SHARE, gpu_attention_budget

    gib = 2**30
    state = {"fraction": 1.0}
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (20 * gib, 24 * gib))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: state["fraction"])
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 2 * gib)
    cuda = torch.device("cuda", 0)

    assert gpu_attention_budget(torch.device("cpu")) is None
    assert gpu_attention_budget(cuda) == int(GPU_BUDGET_SHARE * 20 * gib), "no cap: a share of what is free"
    state["fraction"] = 0.5  # GPU_MEMORY_LIMIT_GB=12 on a 24 GB card, 2 GB already held by this process
    assert gpu_attention_budget(cuda) == int(GPU_BUDGET_SHARE * 10 * gib)
    state["fraction"] = 0.05
    assert gpu_attention_budget(cuda) == 0, "a cap below what the model holds leaves nothing for full attention"
