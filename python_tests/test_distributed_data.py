"""Several processes, one download (2 gloo ranks, the downloader faked: no network here), and a
resume where fewer GPUs are visible than the checkpoint has CUDA RNG states for (faked on the CPU)."""

from pathlib import Path

import pytest
import torch
from dist_data_helpers import N_PER_BATCH, download_worker, precision_worker
from dist_helpers import run_ranks

from sslext.app.training import checkpoint as C

WORLD = 2


@pytest.mark.parametrize("fail", [False, True], ids=["downloads", "download_fails"])
def test_rank_zero_downloads_the_others_wait(tmp_path, fail):
    run_ranks(download_worker, WORLD, tmp_path, str(tmp_path), fail, timeout=240)
    calls = (tmp_path / "download_calls").read_text().split()
    assert calls == ["0"]  # rank 0 alone fetched it, once
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    if not fail:
        # Rank 1 read what rank 0 left: the whole dataset, not a half-written folder.
        assert all(r == {"n_train": 5 * N_PER_BATCH, "n_test": N_PER_BATCH} for r in res), res
    else:
        assert "no network here" in res[0]["error"]
        assert "rank 0" in res[1]["error"] and "no network here" in res[1]["error"] and "did not try" in res[1]["error"]


def test_cpu_auto_precision_is_measured_together_and_shared(tmp_path):
    """Every rank measures at once (the model copy's SyncBatchNorm and loss all-gather are collectives),
    rank 0's answer is everyone's; the second start reads the cache on every rank alike."""
    run_ranks(precision_worker, WORLD, tmp_path, str(tmp_path), timeout=240)
    res = [torch.load(tmp_path / f"prec{r}.pt") for r in range(WORLD)]
    assert res[0] == res[1]
    assert "measured" in res[0]["first"][1] and "cached" in res[0]["cached"][1]
    assert set(res[0]["first"][2]) == {"float32", "bf16"} and res[0]["first"][2] == res[0]["cached"][2]


class _Aug:
    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)


def _ckpt(n_cuda_states):
    g = torch.Generator().manual_seed(5)
    return {
        "world_size": 1,
        "augment": {"generator": g.get_state()},
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": [torch.full((16,), i, dtype=torch.uint8) for i in range(n_cuda_states)],
    }


@pytest.fixture
def fake_gpus(monkeypatch):
    """``n`` visible GPUs whose set_rng_state calls are recorded."""
    calls = []

    def make(n):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append((int(state[0]), device)))
        return calls

    return make


@pytest.mark.parametrize(
    "saved,visible,restored,says",
    [
        (8, 2, [(0, 0), (1, 1)], "restored the states of GPUs 0-1 and dropped those of GPUs 2-7"),
        (3, 1, [(0, 0)], "3 GPUs, 1 visible"),
        (2, 4, [(0, 0), (1, 1)], "GPUs 2-3 keep their own"),
        (2, 0, [], "no GPU is visible: none restored"),
        (2, 2, [(0, 0), (1, 1)], None),
        (0, 2, [], None),
    ],
)
def test_resume_with_other_gpu_count_restores_what_fits(fake_gpus, capsys, saved, visible, restored, says):
    calls = fake_gpus(visible)
    aug = _Aug()
    note = C.restore_rng(_ckpt(saved), aug, torch.device("cpu"), 0, 1, seed=0, global_step=3, main=True)
    assert calls == restored
    err = capsys.readouterr().err
    if says is None:
        assert note is None and err == ""
    else:
        assert says in note and says in err
    # The CPU streams came back whatever the GPUs.
    assert torch.equal(aug.generator.get_state(), torch.Generator().manual_seed(5).get_state())


def test_trainer_resume_logs_the_dropped_states(tmp_path, fake_gpus):
    """A run resumed where fewer GPUs are visible: its resume record says what happened to the extra states."""
    import json

    from sslext.app.config import load_config
    from sslext.app.training import Trainer

    cfg = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "smoke_synthetic.yaml",
        [
            "model.width=4",
            "method.projector=[16,16]",
            "data.train_limit=32",
            "optim.batch_size=16",
            "augment.view1.crop_size=8",
            "augment.view2.crop_size=8",
            "train.max_steps=1",
            "eval.final=false",
            "train.amp=false",
            f"train.out_dir={tmp_path}",
        ],
    )
    Trainer(cfg).fit()
    ckpt_path = tmp_path / cfg["name"] / "last.pt"
    ck = torch.load(ckpt_path, weights_only=False)
    ck["cuda_rng"] = [torch.zeros(16, dtype=torch.uint8) for _ in range(4)]  # written on a 4-GPU node
    torch.save(ck, ckpt_path)
    fake_gpus(1)
    cfg["train"]["max_steps"] = 2
    Trainer(cfg, resume=True)
    recs = [json.loads(line) for line in (tmp_path / cfg["name"] / "metrics.jsonl").read_text().splitlines()]
    resume = [r for r in recs if r["kind"] == "resume"]
    assert len(resume) == 1 and "dropped those of GPUs 1-3" in resume[0]["cuda_rng"]
