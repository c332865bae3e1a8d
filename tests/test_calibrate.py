"""qwen_chat.engine.calibrate: `precision: auto` measures the kernels on this CPU once, keeps the
fastest one that passes the quality gate, caches the choice and says it in the System panel."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from transformers import AutoConfig

from qwen_chat.engine import calibrate, int4, precision
from qwen_chat.engine.local import Engine
from qwen_chat.engine.sources import load


@pytest.fixture(scope="module")
def tiny_config(tiny_dir):
    return AutoConfig.from_pretrained(tiny_dir)


def test_measures_every_candidate_once_then_reads_the_cache(tiny_config, tmp_path):
    cache, told = tmp_path / "calibration.json", []
    first = calibrate.cached_or_measured(tiny_config, 1, cache, on_measure=lambda: told.append(1))
    assert told == [1]  # the loading banner was told
    candidates = calibrate.eligible()
    if len(candidates) > 1:  # decode is timed only when there is a choice to make
        assert set(first.decode_ms) == set(candidates) and all(v > 0 for v in first.decode_ms.values())
        fastest = min(first.decode_ms, key=first.decode_ms.get)
        assert (first.precision, first.kernel) == (("int8", "digits") if fastest == calibrate.DIGITS
                                                   else (fastest, "weight-only"))
    else:
        assert first.decode_ms == {} and first.precision == candidates[0] == "int8"
    assert set(first.prompt_ms) == {c if c == calibrate.DIGITS else f"{c} {p}"
                                     for c in candidates for p in ("kernel", "fp32")}
    assert all(set(v) == {"48", "512"} for v in first.prompt_ms.values())
    saved = json.loads(cache.read_text(encoding="utf-8"))
    assert saved[calibrate.key(tiny_config, 1)]["precision"] == first.precision

    again = calibrate.cached_or_measured(tiny_config, 1, cache, on_measure=lambda: told.append(2))
    assert told == [1] and again == first  # read back, not measured
    # Another thread count is measured on its own and kept beside the first.
    calibrate.cached_or_measured(tiny_config, 2, cache, on_measure=lambda: told.append(3))
    assert told == [1, 3] and len(json.loads(cache.read_text(encoding="utf-8"))) == 2


def test_a_corrupt_cache_is_measured_again(tiny_config, tmp_path):
    cache = tmp_path / "calibration.json"
    cache.write_text("{not json", encoding="utf-8")
    told = []
    result = calibrate.cached_or_measured(tiny_config, 1, cache, on_measure=lambda: told.append(1))
    assert told == [1] and result.precision in ("int8", "int4")
    assert calibrate.key(tiny_config, 1) in json.loads(cache.read_text(encoding="utf-8"))


def test_the_quality_gate_decides_which_formats_compete():
    digits = [calibrate.DIGITS] if calibrate.digits.digit_format() is not None else []
    int4_ok = ["int4"] if int4.available() else []
    assert calibrate.eligible({"int8": 0.954, calibrate.DIGITS: 0.955, "int4": 0.94}) == ["int8", *digits]
    assert calibrate.eligible({"int8": 0.954, calibrate.DIGITS: 0.94, "int4": None}) == ["int8"]
    assert calibrate.eligible({"int8": 0.954, calibrate.DIGITS: 0.955, "int4": 0.96}) == (
        ["int8", *digits, *int4_ok])


def test_the_prompt_plan_follows_the_figures():
    c = calibrate.Calibration("int8", "fp32 from 24 rows")
    assert c.plan() == precision.Prefill(24, torch.float32)
    assert calibrate.Calibration("int4", "kernel").plan().dtype is None


def test_auto_loads_the_measured_choice_and_the_panel_says_it(tiny_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    model, tok = load(str(folder), cache_dir=tmp_path / "cache", precision="auto", threads=1)
    chosen = model.calibration
    assert chosen is not None and model.precision == chosen.precision
    assert model.kernel == chosen.kernel
    if chosen.kernel == "weight-only":
        assert precision.prefill_of(model) == chosen.plan()
    assert (tmp_path / "cache" / "calibration.json").is_file()
    assert list((tmp_path / "cache" / "quantized").glob(f"*-{chosen.precision}.pt"))
    engine = Engine(model, tok, name="tiny", autostart=False)
    try:
        shown = engine.precision
    finally:
        engine.stop_all()
    assert shown.startswith(chosen.precision) and "measured here" in shown
    assert chosen.prefill in shown
    assert all(f"{k} {v:.1f} ms" in shown for k, v in chosen.decode_ms.items())
    # A number in config.yaml is not measured: no calibration, that precision.
    fixed, _ = load(str(folder), cache_dir=tmp_path / "cache", precision="int8")
    assert fixed.calibration is None and fixed.precision == "int8"


@pytest.mark.slow
def test_int4_passes_the_quality_gate_as_recorded(smollm):
    """QUALITY["int4"] is what this measures: int4 competes in calibration only while it holds.
    The model's input features are permuted first (bench/quality.py --scramble), so int4's groups
    do not line up with the GGUF file's own Q4_1 blocks (which would make it lossless)."""
    from bench.quality import MIN_AGREEMENT, PROMPTS, scramble

    if not int4.available():
        pytest.skip("no usable int4 kernel in this torch build / CPU")
    from bench.quality import log_probs_all
    from tests.models import fp32_reference

    model, tok = smollm
    # The permutation leaves the function unchanged: fp32's reference is the unscrambled one's.
    quant, used = precision.apply_precision(scramble(copy.deepcopy(model)), "int4")
    assert used == "int4"
    agree = total = 0
    # Every third prompt (about 290 of the 864 positions; the whole reference is shared with
    # test_precision's int8 check): the figure moves by a few points, the verdict cannot, since
    # int4 lands about 20 points under the bar.
    reference = fp32_reference(model, tok, PROMPTS, new_tokens=16)[::3]
    for (_, _, ref), got in zip(reference, log_probs_all(quant, reference)):
        agree += (ref.argmax(-1) == got.argmax(-1)).sum().item()
        total += ref.shape[0]
    result = {"top1_agreement": agree / total, "positions": total}
    print(result)
    assert MIN_AGREEMENT == calibrate.MIN_AGREEMENT
    assert abs(result["top1_agreement"] - calibrate.QUALITY["int4"]) < 0.05, result
    assert (result["top1_agreement"] >= MIN_AGREEMENT) == ("int4" in calibrate.eligible()), result


@pytest.mark.skipif(calibrate.digits.digit_format() is None, reason="no exact fbgemm int8 GEMM here")
def test_a_measured_digits_choice_is_what_loads(tiny_dir, tmp_path, monkeypatch):
    from qwen_chat.engine.digits import DigitsLinear

    measured = calibrate.Calibration("int8", "digits", decode_ms={"int8": 30.0, calibrate.DIGITS: 20.0},
                                     kernel="digits")
    monkeypatch.setattr(calibrate, "cached_or_measured", lambda *a, **k: measured)
    model, _ = load(str(tiny_dir), cache_dir=tmp_path, precision="auto", threads=1)
    assert model.kernel == "digits" and isinstance(model.lm_head, DigitsLinear)
    assert model.calibration.summary().startswith("int8 digits (a token's layers and lm_head: int8 30.0 ms")
    measured.kernel, measured.prefill = "weight-only", "kernel"  # the other way round
    model, _ = load(str(tiny_dir), cache_dir=tmp_path, precision="auto", threads=1)
    assert model.kernel == "weight-only" and not any(isinstance(m, DigitsLinear) for m in model.modules())
