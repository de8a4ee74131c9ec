import pytest
import torch

from sslext.evaluate import collapse_diagnostics, knn_accuracy, linear_probe, rankme, stratified_subset


def _blobs(n_per=100, d=16, c=4, seed=0, sep=6.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g) * sep
    y = torch.arange(c).repeat_interleave(n_per)
    x = centers[y] + torch.randn(len(y), d, generator=g)
    return x, y


def test_linear_probe_separable():
    xtr, ytr = _blobs(seed=0)
    xte, yte = _blobs(seed=0)
    xte = xte + torch.randn(xte.shape, generator=torch.Generator().manual_seed(9)) * 0.1
    res = linear_probe(xtr, ytr, xte, yte, epochs=30, lr=0.05)
    assert res["test_acc"] >= 99.0 and res["train_acc"] >= 99.0


def test_knn_separable():
    xtr, ytr = _blobs(seed=1)
    xte, yte = _blobs(n_per=20, seed=1)
    # cosine kNN needs angularly separated classes: centres far from the origin do that
    assert knn_accuracy(xtr, ytr, xte, yte, k=200, temperature=0.1) >= 99.0


def test_knn_k_larger_than_train():
    xtr, ytr = _blobs(n_per=5, seed=2)
    assert knn_accuracy(xtr, ytr, xtr, ytr, k=200) >= 90.0


def test_rankme_and_collapse():
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(2000, 32, generator=g)
    assert rankme(iso) > 28
    collapsed = torch.randn(2000, 1, generator=g) * torch.randn(1, 32, generator=g)
    assert rankme(collapsed) < 1.5
    z = iso.clone()
    z[:, :8] = 3.0  # 8 constant dimensions
    d = collapse_diagnostics(z, "p_")
    assert d["p_dead_frac"] == pytest.approx(0.25)
    assert d["p_dim"] == 32


def test_stratified_subset():
    y = torch.arange(10).repeat_interleave(50)
    idx = stratified_subset(y, 0.1, seed=0)
    assert len(idx) == 50
    assert torch.bincount(y[idx]).tolist() == [5] * 10
    assert torch.equal(idx, stratified_subset(y, 0.1, seed=0))
    with pytest.raises(ValueError, match="fraction"):
        stratified_subset(y, 0.0)


def test_bad_inputs_named():
    x, y = _blobs()
    with pytest.raises(ValueError, match="train_y"):
        linear_probe(x, y[:-1], x, y)
    with pytest.raises(ValueError, match="test_x"):
        knn_accuracy(x, y, x[:, :3], y)
    with pytest.raises(ValueError, match="k:"):
        knn_accuracy(x, y, x, y, k=0)
