"""train.amp -> Precision: the GPU rule on faked compute capabilities, the CPU's measured choice and its cache."""

import json
from pathlib import Path

import pytest
import torch

from sslext.app.config import ConfigError, apply_override, load_config
from sslext.app.training import Precision, Trainer, resolve_precision
from sslext.app.training import precision as P

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke_synthetic.yaml"
CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device of the given compute capability, on a machine without one."""

    def make(major, minor):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))

    return make


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLEXT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize(
    "cc,dtype,scaler",
    [
        ((7, 5), torch.float16, True),
        ((7, 0), torch.float16, True),
        ((8, 0), torch.bfloat16, False),
        ((8, 6), torch.bfloat16, False),
        ((9, 0), torch.bfloat16, False),
    ],
)
def test_cuda_auto_follows_compute_capability(fake_gpu, cc, dtype, scaler):
    fake_gpu(*cc)
    p = resolve_precision("auto", CUDA)
    assert (p.dtype, p.scaler) == (dtype, scaler)
    assert f"{cc[0]}.{cc[1]}" in p.reason and p.rates is None


def test_cuda_explicit_settings(fake_gpu):
    fake_gpu(7, 5)
    bf16 = resolve_precision("bf16", CUDA)
    assert (bf16.dtype, bf16.scaler) == (torch.bfloat16, False) and "emulates bf16" in bf16.reason
    assert resolve_precision(True, CUDA).dtype == torch.bfloat16  # old configs: true meant bf16
    fp16 = resolve_precision("fp16", CUDA)
    assert (fp16.dtype, fp16.scaler) == (torch.float16, True)
    off = resolve_precision(False, CUDA)
    assert (off.dtype, off.scaler, off.name) == (None, False, "float32")


@pytest.mark.parametrize("bad", ["maybe", "float16", 1, None])
def test_bad_setting_names_the_key(bad):
    with pytest.raises(ConfigError, match="train.amp"):
        resolve_precision(bad, CPU)


def test_config_accepts_the_words_and_rejects_others():
    cfg = load_config(SMOKE)
    for word in ("auto", "bf16", "fp16", "true", "false"):
        apply_override(cfg, f"train.amp={word}")
    with pytest.raises(ConfigError, match="train.amp"):
        apply_override(cfg, "train.amp=fp8")


class FakeRates:
    """measure(dtype) with fixed images/s per precision, counting its calls."""

    def __init__(self, fp32, bf16):
        self.rates = {None: fp32, torch.bfloat16: bf16}
        self.calls = []

    def __call__(self, dtype):
        self.calls.append(dtype)
        return self.rates[dtype]


@pytest.mark.parametrize(
    "fp32,bf16,expect", [(400.0, 900.0, torch.bfloat16), (700.0, 650.0, None), (500.0, 510.0, None)]
)  # within the margin: float32
def test_cpu_auto_picks_the_faster_and_caches_it(cache_dir, fp32, bf16, expect):
    m = FakeRates(fp32, bf16)
    p = resolve_precision("auto", CPU, measure=m, workload="vicreg resnet10 w8")
    assert p.dtype == expect and not p.scaler
    assert sorted(map(str, m.calls)) == ["None", "torch.bfloat16"]
    assert p.rates == {"float32": fp32, "bf16": bf16}
    assert f"{bf16:.1f}" in p.reason and f"{fp32:.1f}" in p.reason and "measured" in p.reason
    entry = next(iter(json.loads((cache_dir / "cpu_precision.json").read_text()).values()))
    assert entry["choice"] == p.name and entry["float32"] == fp32 and entry["bf16"] == bf16
    # Again on this machine: read from the cache, nothing measured.
    again = resolve_precision("auto", CPU, measure=m, workload="vicreg resnet10 w8")
    assert len(m.calls) == 2 and again.dtype == p.dtype and "cached" in again.reason
    # Another workload is measured on its own.
    resolve_precision("auto", CPU, measure=m, workload="byol resnet18 w64")
    assert len(m.calls) == 4


def test_cpu_cache_key_holds_cpu_torch_and_threads(cache_dir):
    resolve_precision("auto", CPU, measure=FakeRates(1.0, 2.0), workload="w")
    key = next(iter(json.loads((cache_dir / "cpu_precision.json").read_text())))
    assert P.cpu_model() in key and torch.__version__ in key and f"{torch.get_num_threads()} threads" in key


def test_corrupt_or_unwritable_cache_still_chooses(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SSLEXT_CACHE_DIR", str(blocker / "sub"))
    lines = []
    p = resolve_precision("auto", CPU, measure=FakeRates(1.0, 3.0), workload="w", log=lines.append)
    assert p.dtype == torch.bfloat16 and len(lines) == 1 and "could not cache" in lines[0]
    good = tmp_path / "good"
    good.mkdir()
    (good / "cpu_precision.json").write_text("{ not json")
    monkeypatch.setenv("SSLEXT_CACHE_DIR", str(good))
    assert resolve_precision("auto", CPU, measure=FakeRates(3.0, 1.0), workload="w").dtype is None


def test_cache_location_follows_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SSLEXT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert P.cache_file() == tmp_path / "xdg" / "sslext" / "cpu_precision.json"
    monkeypatch.setenv("SSLEXT_CACHE_DIR", str(tmp_path / "mine"))
    assert P.cache_file() == tmp_path / "mine" / "cpu_precision.json"


def test_cpu_explicit_settings_measure_nothing(cache_dir):
    m = FakeRates(1.0, 2.0)
    assert resolve_precision(False, CPU, measure=m).dtype is None
    assert resolve_precision("bf16", CPU, measure=m).dtype == torch.bfloat16
    assert resolve_precision("fp16", CPU, measure=m).scaler
    assert m.calls == [] and not cache_dir.exists()


def test_autocast_context_matches_the_choice():
    with Precision(torch.bfloat16, False, "").autocast("cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with Precision(None, False, "").autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")


def _tiny_cfg(tmp_path, amp):
    cfg = load_config(SMOKE)
    for o in (
        "model.width=4",
        "method.projector=[16,16]",
        "data.train_limit=32",
        "data.test_limit=32",
        "augment.view1.crop_size=8",
        "augment.view2.crop_size=8",
        "optim.batch_size=16",
        "train.max_steps=1",
        "eval.final=false",
        f"train.out_dir={tmp_path / 'runs'}",
        f"train.amp={amp}",
    ):
        apply_override(cfg, o)
    return cfg


def test_measurement_leaves_the_run_untouched(tmp_path):
    cfg = _tiny_cfg(tmp_path, "false")
    from sslext.app.training import build_everything

    method = build_everything(cfg, CPU)["method"]
    before = {k: v.clone() for k, v in method.state_dict().items()}
    rng = torch.get_rng_state()
    rate = P.measure_training_rate(method, (8, 3, 8, 8), method.num_views, True, torch.bfloat16, steps=1)
    assert rate > 0 and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())
    assert all(p.grad is None for p in method.parameters())


def test_trainer_logs_its_precision(tmp_path, cache_dir):
    tr = Trainer(_tiny_cfg(tmp_path, "auto"))
    assert tr.precision.rates is not None and set(tr.precision.rates) == {"float32", "bf16"}
    tr.fit()
    recs = [json.loads(line) for line in (tr.run_dir / "metrics.jsonl").read_text().splitlines()]
    rec = next(r for r in recs if r["kind"] == "precision")
    assert rec["amp"] == "auto" and rec["precision"] == tr.precision.name and rec["bf16_images_per_second"] > 0
    assert (cache_dir / "cpu_precision.json").exists()
    tr16 = Trainer(_tiny_cfg(tmp_path / "b", "bf16"))
    assert tr16.precision.dtype == torch.bfloat16 and tr16.precision.rates is None
