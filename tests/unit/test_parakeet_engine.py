"""ParakeetEngine on a tiny NeMo TDT model built at test time.

The tiny model has random weights, so the words are nonsense: these tests check
structure (order, file-time offsets, modes, recovery), never the words.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from parascribe.audio import SAMPLE_RATE
from parascribe.config import load_settings
from parascribe.engines.base import AudioChunk, EngineOutput
from parascribe.engines.parakeet.engine import ParakeetEngine, stitch_halves, weights_available
from parascribe.errors import EngineError, EngineOOMError, EngineUnavailableError, TransientError, is_transient
from tests.nemo_tiny import build_tiny_nemo, noise

LONG_S = 2.5  # the tests' LONG_AUDIO_THRESHOLD_SECONDS, so a 3 s chunk counts as long


# --- no NeMo needed ---


def test_stitch_halves_keeps_each_word_once_by_midpoint() -> None:
    left = [("a", 0.0, 1.0), ("b", 4.0, 5.2), ("seam", 5.6, 6.0)]
    right = [("b", 4.05, 5.25), ("seam", 5.6, 6.0), ("c", 7.0, 8.0)]
    # "b" (midpoint 4.6) is left of the seam: the left piece's copy wins; "seam" (5.8) is the right's.
    assert stitch_halves(left, right, cut_s=5.0) == [("a", 0.0, 1.0), ("b", 4.0, 5.2), ("seam", 5.6, 6.0),
                                                     ("c", 7.0, 8.0)]
    # The cut falls between the two copies' midpoints (4.60 and 4.65): "b" must still appear once.
    assert stitch_halves(left, right, cut_s=4.62) == [("a", 0.0, 1.0), ("b", 4.0, 5.2), ("seam", 5.6, 6.0),
                                                      ("c", 7.0, 8.0)]
    assert stitch_halves([], right, cut_s=5.0) == [("seam", 5.6, 6.0), ("c", 7.0, 8.0)]


def test_weights_available_for_local_files(tmp_path: Path) -> None:
    nemo = tmp_path / "model.nemo"
    nemo.write_bytes(b"x")
    other = tmp_path / "model.txt"
    other.write_bytes(b"x")
    assert weights_available(load_settings(parakeet_model_name=str(nemo)))
    assert not weights_available(load_settings(parakeet_model_name=str(tmp_path / "missing.nemo")))
    assert not weights_available(load_settings(parakeet_model_name=str(other)))


def test_weights_available_reads_the_hugging_face_cache_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hf_constants = pytest.importorskip("huggingface_hub.constants", reason="huggingface_hub comes with NeMo")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = load_settings(parakeet_model_name="nvidia/parakeet-tdt-0.6b-v2")
    assert not weights_available(settings)
    # The layout huggingface_hub writes: refs/main names the snapshot holding the file.
    repo = tmp_path / "models--nvidia--parakeet-tdt-0.6b-v2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "parakeet-tdt-0.6b-v2.nemo").write_bytes(b"x")
    assert weights_available(settings)


def test_missing_weights_are_unavailable_not_a_crash(tmp_path: Path) -> None:
    settings = load_settings(parakeet_model_name=str(tmp_path / "nope.nemo"), asr_device="cpu")
    with pytest.raises(EngineUnavailableError, match="no such .nemo file"):
        ParakeetEngine.from_settings(settings)


def test_hf_name_not_cached_while_offline_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hf_constants = pytest.importorskip("huggingface_hub.constants", reason="huggingface_hub comes with NeMo")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = load_settings(parakeet_model_name="nvidia/parakeet-tdt-0.6b-v2", asr_device="cpu")
    with pytest.raises(EngineUnavailableError, match="HF_HUB_OFFLINE"):
        ParakeetEngine.from_settings(settings)


def test_cuda_requested_without_a_gpu_is_unavailable(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so ASR_DEVICE=cuda is valid here")
    nemo = tmp_path / "model.nemo"
    nemo.write_bytes(b"x")
    with pytest.raises(EngineUnavailableError, match="ASR_DEVICE=cuda"):
        ParakeetEngine.from_settings(load_settings(parakeet_model_name=str(nemo), asr_device="cuda"))


# --- on the tiny NeMo model ---


@pytest.fixture(scope="module")
def tiny_nemo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("nemo.collections.asr", reason="NeMo is not installed (pip install 'parascribe[nemo]')")
    return build_tiny_nemo(tmp_path_factory.mktemp("tiny-parakeet"))


def _engine(path: Path, **overrides: Any) -> ParakeetEngine:
    values: dict[str, Any] = {"parakeet_model_name": str(path), "asr_device": "cpu",
                              "long_audio_threshold_seconds": LONG_S, **overrides}
    settings = load_settings(**values)
    return ParakeetEngine.from_settings(settings)


@pytest.fixture(scope="module")
def engine(tiny_nemo: Path) -> Iterator[ParakeetEngine]:
    eng = _engine(tiny_nemo)
    yield eng
    eng.close()


@pytest.fixture
def fresh_engine(tiny_nemo: Path) -> Iterator[ParakeetEngine]:
    """An engine of its own, for tests that patch the model or count recoveries."""
    eng = _engine(tiny_nemo, long_audio_threshold_seconds=900.0)
    yield eng
    eng.close()


def _chunk(key: str, seconds: float, offset: float, seed: int) -> AudioChunk:
    return AudioChunk(key=key, samples=noise(seconds, seed=seed), offset_s=offset)


def _words(out: EngineOutput) -> list[tuple[str, float, float]]:
    return [(w.text, w.start, w.end) for w in out.words]


def _assert_in_file_time(out: EngineOutput, chunk: AudioChunk) -> None:
    for w in out.words:
        assert chunk.offset_s <= w.start <= w.end <= chunk.offset_s + chunk.duration_s + 1e-9, (w, chunk.key)
    starts = [w.start for w in out.words]
    assert starts == sorted(starts)


CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


def _inject_oom(engine: ParakeetEngine, monkeypatch: pytest.MonkeyPatch,
                when: Callable[[list[int], str], bool]) -> list[tuple[list[int], str]]:
    """Make the model call raise CUDA OOM when ``when(lengths, attention)``; returns the calls seen."""
    import torch

    model = engine.model
    real = model.transcribe
    calls: list[tuple[list[int], str]] = []

    def transcribe(audio: list[Any], *args: Any, **kwargs: Any) -> Any:
        lengths = [len(a) for a in audio]
        calls.append((lengths, engine.attention))
        if when(lengths, engine.attention):
            raise torch.cuda.OutOfMemoryError(CUDA_OOM)
        return real(audio, *args, **kwargs)

    monkeypatch.setattr(model, "transcribe", transcribe)
    return calls


@pytest.mark.nemo
def test_loads_the_tiny_nemo_through_from_settings(engine: ParakeetEngine) -> None:
    model = engine.model
    assert engine.name == "parakeet"
    assert type(model).__name__ == "EncDecRNNTBPEModel"
    assert model.cfg.decoding.model_type == "tdt"
    assert model.cfg.decoding.compute_timestamps is True
    assert str(engine.device) == "cpu"
    assert engine.attention == "full"


@pytest.mark.nemo
def test_batch_keeps_input_order_and_puts_words_in_file_time(engine: ParakeetEngine) -> None:
    batch = [
        _chunk("a", 1.5, 0.0, 1),
        _chunk("b", 3.0, 600.0, 2),  # long: runs with local attention, in its own group
        _chunk("c", 0.6, 1200.0, 3),  # under NeMo's 1 s minimum: padded on the right only
        _chunk("d", 2.2, 1800.0, 4),
        _chunk("empty", 0.0, 2400.0, 5),
    ]
    out = engine.transcribe(batch)
    assert len(out) == len(batch)
    for o, c in zip(out, batch, strict=True):
        _assert_in_file_time(o, c)
    assert out[-1].words == [] and out[-1].text == ""
    assert sum(len(o.words) for o in out) >= 4
    assert any(w.start > c.offset_s for o, c in zip(out, batch, strict=True) for w in o.words)
    # The engine sorts internally, so the same chunks in another order give the same output per chunk.
    again = engine.transcribe(batch[::-1])[::-1]
    assert [_words(o) for o in again] == [_words(o) for o in out]
    assert [o.text for o in again] == [o.text for o in out]


@pytest.mark.nemo
def test_model_is_in_eval_mode_after_every_call(engine: ParakeetEngine) -> None:
    engine.transcribe([_chunk("a", 1.0, 0.0, 1), _chunk("b", 3.0, 5.0, 2)])
    assert not any(m.training for m in engine.model.modules())


@pytest.mark.nemo
def test_long_chunks_switch_to_local_attention_and_back(engine: ParakeetEngine) -> None:
    short = [_chunk("s", 2.0, 0.0, 11)]
    first = engine.transcribe(short)
    assert engine.attention == "full"
    assert engine.model.cfg.encoder.self_attention_model == "rel_pos"

    engine.transcribe([_chunk("l", 3.5, 0.0, 12)])
    encoder_cfg = engine.model.cfg.encoder
    assert engine.attention == "local"
    assert encoder_cfg.self_attention_model == "rel_pos_local_attn"
    assert list(encoder_cfg.att_context_size) == [128, 128]
    attn = engine.model.encoder.layers[0].self_attn
    assert type(attn).__name__ == "RelPositionMultiHeadAttentionLongformer"

    again = engine.transcribe(short)
    assert engine.attention == "full"
    assert type(engine.model.encoder.layers[0].self_attn).__name__ == "RelPositionMultiHeadAttention"
    assert _words(again[0]) == _words(first[0]), "switching attention back must restore the same model"


@pytest.mark.nemo
def test_batch_oom_raises_engine_oom_error_for_the_worker_to_halve(
    fresh_engine: ParakeetEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _inject_oom(fresh_engine, monkeypatch, lambda lengths, mode: True)
    with pytest.raises(EngineOOMError) as info:
        fresh_engine.transcribe([_chunk("a", 1.0, 0.0, 1), _chunk("b", 2.0, 0.0, 2)])
    assert isinstance(info.value, TransientError) and is_transient(info.value)
    assert "2 chunks" in info.value.reason
    assert len(calls) == 1 and calls[0][0] == [2 * SAMPLE_RATE, SAMPLE_RATE], "longest first"
    assert fresh_engine.recoveries == {"oom": 1}
    assert not any(m.training for m in fresh_engine.model.modules())


@pytest.mark.nemo
def test_single_chunk_oom_retries_with_local_attention_then_splits(
    fresh_engine: ParakeetEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk = _chunk("big", 6.0, 100.0, 21)
    n = len(chunk.samples)
    # Expected result from the un-patched model: the two overlapping halves stitched at the middle.
    cut, half_overlap = n // 2, SAMPLE_RATE // 2
    left = fresh_engine.transcribe([AudioChunk("l", chunk.samples[: cut + half_overlap], 100.0)])[0]
    right = fresh_engine.transcribe([AudioChunk("r", chunk.samples[cut - half_overlap:],
                                                100.0 + (cut - half_overlap) / SAMPLE_RATE)])[0]
    expected = stitch_halves(_words(left), _words(right), 100.0 + cut / SAMPLE_RATE)

    calls = _inject_oom(fresh_engine, monkeypatch, lambda lengths, mode: max(lengths) > 4 * SAMPLE_RATE)
    out = fresh_engine.transcribe([chunk])[0]

    assert [(lengths[0], mode) for lengths, mode in calls] == [
        (n, "full"), (n, "local"), (cut + half_overlap, "full"), (n - cut + half_overlap, "full"),
    ]
    assert fresh_engine.recoveries == {"oom": 1, "local_attention": 1, "split": 1}
    _assert_in_file_time(out, chunk)
    assert out.words, "the tiny model emits words for 6 s of noise"
    assert [(w, pytest.approx(s), pytest.approx(e)) for w, s, e in _words(out)] == expected
    assert out.text == " ".join(w.text for w in out.words)


@pytest.mark.nemo
def test_chunk_that_never_fits_fails_permanently(
    fresh_engine: ParakeetEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _inject_oom(fresh_engine, monkeypatch, lambda lengths, mode: True)
    with pytest.raises(EngineError) as info:
        fresh_engine.transcribe([_chunk("huge", 8.0, 0.0, 31)])
    assert not isinstance(info.value, EngineOOMError), "a single chunk cannot be halved by the worker"
    assert "does not fit" in info.value.reason
    assert fresh_engine.recoveries["split"] >= 2 and fresh_engine.recoveries["local_attention"] >= 2


@pytest.mark.nemo
def test_cpu_fallback_runs_the_chunk_on_a_cpu_copy(tiny_nemo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nemo.collections.asr.models import ASRModel

    loads: list[Any] = []

    def load_cpu_copy() -> Any:
        loads.append(ASRModel.restore_from(str(tiny_nemo), map_location="cpu"))
        return loads[-1]

    engine = ParakeetEngine(ASRModel.restore_from(str(tiny_nemo), map_location="cpu"), "cpu",
                            long_audio_threshold_s=900.0, cpu_fallback=load_cpu_copy)
    chunk = _chunk("c", 3.0, 50.0, 41)
    expected = _words(engine.transcribe([chunk])[0])
    _inject_oom(engine, monkeypatch, lambda lengths, mode: True)

    first = engine.transcribe([chunk])[0]
    second = engine.transcribe([chunk])[0]

    assert _words(first) == _words(second) == expected
    assert engine.recoveries["cpu_fallback"] == 2
    assert len(loads) == 1, "the CPU copy loads once and is kept"
    assert loads[0].cfg.encoder.self_attention_model == "rel_pos_local_attn", "memory linear in length on the CPU"
    assert engine.attention == "local", "the GPU model tried local attention before giving up"
    engine.close()


@pytest.mark.nemo
def test_bf16_keeps_every_weight_in_bf16_across_attention_switches(tiny_nemo: Path) -> None:
    import torch
    from nemo.collections.asr.models import ASRModel

    engine = ParakeetEngine(ASRModel.restore_from(str(tiny_nemo), map_location="cpu"), "cpu", bf16=True,
                            long_audio_threshold_s=LONG_S)
    batch = [_chunk("long", 3.0, 30.0, 61), _chunk("short", 1.2, 0.0, 62)]
    out = engine.transcribe(batch)
    for o, c in zip(out, batch, strict=True):
        _assert_in_file_time(o, c)
    assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}
    engine.transcribe([batch[0]])
    assert engine.attention == "local"
    assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}, "new attention layers are cast too"
    engine.close()


@pytest.mark.nemo
def test_memory_budget_runs_full_attention_in_sub_batches_with_the_same_words(
    tiny_nemo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nemo.collections.asr.models import ASRModel

    batch = [_chunk(str(i), seconds, 10.0 * i, 70 + i) for i, seconds in enumerate([2.0, 1.0, 2.0, 1.5, 2.0])]
    unlimited = ParakeetEngine(ASRModel.restore_from(str(tiny_nemo), map_location="cpu"), "cpu",
                               long_audio_threshold_s=900.0)
    expected = [_words(o) for o in unlimited.transcribe(batch)]
    budget = unlimited.attention_planner.full_attention_bytes(2 * SAMPLE_RATE, batch=2)
    unlimited.close()
    engine = ParakeetEngine(ASRModel.restore_from(str(tiny_nemo), map_location="cpu"), "cpu",
                            long_audio_threshold_s=900.0, attention_budget_bytes=budget)
    calls = _inject_oom(engine, monkeypatch, lambda lengths, mode: False)  # never fails: records the calls

    out = engine.transcribe(batch)

    two, one_half, one = 2 * SAMPLE_RATE, int(1.5 * SAMPLE_RATE), SAMPLE_RATE
    assert calls == [([two, two], "full"), ([two, one_half], "full"), ([one], "full")], "longest first, 2 at a time"
    assert [_words(o) for o in out] == expected, "sub-batches change nothing but memory"
    engine.close()


@pytest.mark.nemo
def test_single_chunk_oom_in_a_larger_batch_is_recovered_in_place(
    engine: ParakeetEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = [_chunk("short", 1.0, 0.0, 81), _chunk("long", 4.0, 60.0, 82), _chunk("mid", 2.0, 120.0, 83)]
    engine.recoveries.clear()
    # The long chunk runs alone with local attention and does not fit; its halves (2.5 s) do.
    calls = _inject_oom(engine, monkeypatch, lambda lengths, mode: mode == "local" and max(lengths) > 3 * SAMPLE_RATE)

    out = engine.transcribe(batch)

    assert [lengths for lengths, _ in calls][:2] == [[2 * SAMPLE_RATE, SAMPLE_RATE], [4 * SAMPLE_RATE]]
    assert engine.recoveries == {"oom": 1, "split": 1}, "no EngineOOMError: the short chunks were already done"
    for o, c in zip(out, batch, strict=True):
        _assert_in_file_time(o, c)
    assert out[1].words, "the recovered chunk has words"


@pytest.mark.nemo
def test_full_attention_working_set_stays_within_the_planners_estimate(tiny_nemo: Path) -> None:
    """Peak RSS of a long full-attention forward against ``full_attention_bytes`` (fp32 on a CPU).

    The forward runs in a fresh interpreter, so memory that earlier tests left to the
    allocator, or threads they left running, cannot move the peak either way. A 2-s forward
    runs first, so the one-time costs of a first forward (thread pools, kernel caches: 30-50 MB
    here, varying run to run) are in the baseline and only the working set is measured.

    glibc's malloc raises its mmap threshold as large blocks are freed, after which freed score
    tensors stay on the heap and count in the peak RSS: on a loaded machine that added up to 12 %
    (7.4-8.3 tensors' worth where 7.3 were live). A fixed threshold (``MALLOC_MMAP_THRESHOLD_``)
    returns every large block when it is freed, so the peak is the live working set: 7.30-7.33
    tensors' worth in six runs with both cores busy.
    """
    script = f"""
import gc, json, torch
from nemo.collections.asr.models import ASRModel
from parascribe.engines.parakeet.engine import ParakeetEngine
from tests.nemo_tiny import noise
from tests.unit.test_parakeet_engine import _peak_rss_mb, _rss_mb
engine = ParakeetEngine(ASRModel.restore_from({str(tiny_nemo)!r}, map_location="cpu"), "cpu",
                        long_audio_threshold_s=900.0)
samples = torch.from_numpy(noise(240.0, seed=91))[None]
warm = torch.from_numpy(noise(2.0, seed=92))[None]
with torch.inference_mode():
    engine.model.forward(input_signal=warm, input_signal_length=torch.tensor([warm.shape[1]]))
gc.collect()
base = _rss_mb()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS (VmHWM)
with torch.inference_mode():
    engine.model.forward(input_signal=samples, input_signal_length=torch.tensor([samples.shape[1]]))
print(json.dumps({{"used": (_peak_rss_mb() - base) * 2**20,
                  "estimate": engine.attention_planner.full_attention_bytes(samples.shape[1])}}))
"""
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)})
    assert run.returncode == 0, run.stderr[-2000:]
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    used, estimate = measured["used"], measured["estimate"]
    assert 0.6 * estimate < used <= estimate, f"used {used / 2**20:.0f} MB, estimated {estimate / 2**20:.0f} MB"


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


@pytest.mark.nemo
def test_gpu_precision_set_up_runs_without_autocast_in_both_attention_modes(tiny_nemo: Path) -> None:
    """On a GPU the model is cast to bf16 and runs without autocast (features stay fp32 in the
    preprocessor); NeMo's dtype handling is the same on a CPU, so that set-up is checked here."""
    import torch
    from nemo.collections.asr.models import ASRModel

    from parascribe.engines.parakeet.runner import Runner

    runner = Runner(ASRModel.restore_from(str(tiny_nemo), map_location="cpu"), torch.device("cpu"), bf16=True)
    runner.autocast = False  # what Runner chooses for a CUDA device
    full = runner.run([noise(3.0, seed=101), noise(1.5, seed=102)])
    runner.set_local(True)
    local = runner.run([noise(3.0, seed=101)])

    assert {p.dtype for p in runner.model.parameters()} == {torch.bfloat16}
    assert full[0].words and local[0].words
    # Seconds, not frames: a TDT word may end up to 4 frames (0.32 s) past the audio; the engine clamps it.
    assert all(0.0 <= start <= end <= 3.0 + 0.32 for _, start, end in full[0].words + local[0].words)
    # 3 s is 38 encoder frames, inside local attention's 128-frame reach: the same words either way.
    assert [w[0] for w in local[0].words] == [w[0] for w in full[0].words]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.nemo
def test_memory_stays_flat_over_many_batches(engine: ParakeetEngine) -> None:
    batch = [_chunk("a", 1.0, 0.0, 51), _chunk("b", 0.6, 1.0, 52)]
    for _ in range(10):
        engine.transcribe(batch)
    gc.collect()
    before = _rss_mb()
    for _ in range(100):
        outputs = engine.transcribe(batch)
    del outputs
    gc.collect()
    grown = _rss_mb() - before
    assert grown < 20.0, f"RSS grew {grown:.1f} MB over 100 batches"


# --- int8 on a CPU without bf16 (PARAKEET_CPU_INT8) ---


def _quantized(model: Any) -> tuple[int, list[str]]:
    """How many int8 layers ``model`` has, and the names of the Linear/LSTM layers still in float."""
    import torch.ao.nn.quantized.dynamic as qd

    from parascribe.engines.parakeet.runner import float_layers

    return sum(isinstance(m, (qd.Linear, qd.LSTM)) for m in model.modules()), float_layers(model)


def _attention_int8(model: Any) -> list[Any]:
    """The int8 weights of every attention projection, in a fixed order."""
    return [m.weight().int_repr().clone() for layer in model.encoder.layers for _, m in
            sorted(layer.self_attn.named_children()) if hasattr(m, "weight") and callable(m.weight)]


def _pointwise(model: Any) -> list[Any]:
    """Every Conformer conv module's pointwise_conv1 and pointwise_conv2, in order."""
    return [getattr(layer.conv, n) for layer in model.encoder.layers for n in ("pointwise_conv1", "pointwise_conv2")]


def test_pointwise_linear_computes_what_the_conv_did() -> None:
    import torch

    from parascribe.engines.parakeet.runner import PointwiseLinear, is_pointwise

    torch.manual_seed(0)
    x = torch.randn(2, 16, 50)
    for bias in (True, False):
        conv = torch.nn.Conv1d(16, 32, kernel_size=1, bias=bias)
        with torch.no_grad():
            assert torch.allclose(PointwiseLinear(conv)(x), conv(x), atol=1e-5)
    assert not is_pointwise(torch.nn.Conv1d(16, 16, kernel_size=3))
    assert not is_pointwise(torch.nn.Conv1d(16, 16, kernel_size=1, groups=16))
    assert not is_pointwise(torch.nn.Conv1d(16, 16, kernel_size=1, stride=2))
    with pytest.raises(ValueError, match="pointwise"):
        PointwiseLinear(torch.nn.Conv1d(16, 16, kernel_size=1, padding=1))


@pytest.mark.nemo
def test_int8_engine_transcribes_a_batch_with_every_linear_and_lstm_quantized(tiny_nemo: Path) -> None:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # precision="fp32" so a CPU with native bf16 (where auto picks bf16) tests the same path.
        engine = ParakeetEngine.from_settings(
            load_settings(parakeet_model_name=str(tiny_nemo), asr_device="cpu", long_audio_threshold_seconds=LONG_S,
                          parakeet_cpu_int8=True), precision="fp32")
    assert not [w for w in caught if "quantiz" in str(w.message)], "the known deprecation warnings are silenced"
    import torch.ao.nn.quantized.dynamic as qd

    assert engine.precision == "int8"
    n_int8, still_float = _quantized(engine.model)
    assert still_float == [] and n_int8 > 0
    d = engine.model.cfg.encoder.d_model
    assert type(engine.model.decoder.prediction["dec_rnn"].lstm).__name__ == "LSTM"
    assert engine.model.decoder.prediction["dec_rnn"].lstm.__module__.startswith("torch.ao.nn.quantized.dynamic")
    pointwise = _pointwise(engine.model)
    assert len(pointwise) == 2 * 2, "pointwise_conv1 and pointwise_conv2 in each of the 2 layers"
    assert all(type(m).__name__ == "PointwiseLinear" and isinstance(m.linear, qd.Linear) for m in pointwise)
    assert [(m.linear.in_features, m.linear.out_features) for m in pointwise[:2]] == [(d, 2 * d), (d, d)]
    assert all(type(layer.conv.depthwise_conv).__name__ == "CausalConv1D" for layer in engine.model.encoder.layers)

    batch = [_chunk("a", 1.5, 0.0, 1), _chunk("long", 3.0, 600.0, 2), _chunk("c", 2.2, 1200.0, 4),
             _chunk("empty", 0.0, 1800.0, 5)]
    out = engine.transcribe(batch)
    assert len(out) == len(batch)
    for o, c in zip(out, batch, strict=True):
        _assert_in_file_time(o, c)
    assert out[-1].words == [] and out[-1].text == ""
    assert sum(len(o.words) for o in out) >= 3
    assert all(o.text == " ".join(w.text for w in o.words) for o in out)
    assert not any(m.training for m in engine.model.modules())
    engine.close()


@pytest.mark.nemo
def test_int8_attention_switch_keeps_the_int8_weights(tiny_nemo: Path) -> None:
    from nemo.collections.asr.models import ASRModel

    engine = ParakeetEngine(ASRModel.restore_from(str(tiny_nemo), map_location="cpu"), "cpu", int8=True,
                            long_audio_threshold_s=LONG_S)
    weights = _attention_int8(engine.model)
    assert len(weights) == 2 * 5, "q, k, v, out and pos projections in each of the 2 layers"
    pointwise = _pointwise(engine.model)
    short = [_chunk("s", 2.0, 0.0, 11)]
    first = engine.transcribe(short)

    long = engine.transcribe([_chunk("l", 3.5, 0.0, 12)])[0]
    assert engine.attention == "local"
    assert type(engine.model.encoder.layers[0].self_attn).__name__ == "RelPositionMultiHeadAttentionLongformer"
    assert _quantized(engine.model)[1] == [], "the new attention blocks are int8 too"
    # NeMo moves weights into the new blocks by state dict, which skips int8 layers: they must be carried over.
    assert all((a == b).all() for a, b in zip(_attention_int8(engine.model), weights, strict=True))
    assert long.words
    assert all(a is b for a, b in zip(_pointwise(engine.model), pointwise, strict=True)), "conv modules untouched"

    again = engine.transcribe(short)
    assert engine.attention == "full"
    assert _quantized(engine.model)[1] == []
    assert all((a == b).all() for a, b in zip(_attention_int8(engine.model), weights, strict=True))
    assert _words(again[0]) == _words(first[0]), "switching attention back must restore the same model"
    engine.close()


@pytest.mark.nemo
def test_int8_cpu_fallback_copy_is_quantized_and_local(tiny_nemo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nemo.collections.asr.models import ASRModel

    engine = ParakeetEngine(ASRModel.restore_from(str(tiny_nemo), map_location="cpu"), "cpu",
                            long_audio_threshold_s=900.0, int8=True, cpu_int8=True,
                            cpu_fallback=lambda: ASRModel.restore_from(str(tiny_nemo), map_location="cpu"))
    chunk = _chunk("c", 3.0, 50.0, 41)
    _inject_oom(engine, monkeypatch, lambda lengths, mode: True)
    out = engine.transcribe([chunk])[0]
    assert engine.recoveries["cpu_fallback"] == 1
    copy = engine._cpu
    assert copy is not None and copy.precision == "int8" and copy.local
    n_int8, still_float = _quantized(copy.model)
    assert still_float == [] and n_int8 > 0
    _assert_in_file_time(out, chunk)
    assert out.words
    engine.close()


def test_int8_is_refused_with_bf16_or_off_the_cpu() -> None:
    torch = pytest.importorskip("torch")
    from parascribe.engines.parakeet.runner import Runner

    with pytest.raises(ValueError, match="int8"):
        Runner(object(), torch.device("cpu"), bf16=True, int8=True)
    with pytest.raises(ValueError, match="int8"):
        Runner(object(), torch.device("cuda"), bf16=False, int8=True)
