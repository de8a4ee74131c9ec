"""The four covariance-family losses as (sslext, reference) pairs, shared by the tests."""

import functools

import torch

import sslext.functional as F
from sslext import reference as R


def _random_cov(d, dtype=torch.float32, device="cpu", seed=0):
    # A realistic running covariance: the second moment of normalised rows.
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(3 * d, d, generator=g, dtype=torch.float64), dim=1)
    return (z.T @ z / (3 * d)).to(device=device, dtype=dtype)


class LossCase:
    def __init__(self, name, ours, ref, stateful, kind=None):
        self.name, self.ours, self.ref, self.stateful = name, ours, ref, stateful
        # The formula's shape (rows contrasted, loss scale), shared by options
        # that change only the gradient.
        self.kind = kind or name

    def run_ours(self, z_a, z_b, strategy, c=None):
        if self.stateful:
            return self.ours(z_a, z_b, c, strategy=strategy, return_terms=True)
        return self.ours(z_a, z_b, strategy=strategy, return_terms=True)

    def run_ref(self, z_a, z_b, c=None):
        out = self.ref(z_a, z_b, c) if self.stateful else self.ref(z_a, z_b)
        return out[0], out[1]

    def make_cov(self, d, device="cpu"):
        return _random_cov(d, device=device) if self.stateful else None


CASES = [
    LossCase("vicreg", F.vicreg_loss, R.vicreg_reference, False),
    LossCase("barlow_twins", F.barlow_twins_loss, R.barlow_twins_reference, False),
    LossCase("tico", F.tico_loss, R.tico_reference, True),
    LossCase("vicreg_tico", F.vicreg_tico_loss, R.vicreg_tico_reference, True),
    LossCase(
        "vicreg_tico_proposal",
        functools.partial(F.vicreg_tico_loss, variant="proposal"),
        R.vicreg_tico_proposal_reference,
        True,
    ),
    # batch_cov_in_graph: B inside the gradient, against references that do not detach it.
    LossCase(
        "tico_graph",
        functools.partial(F.tico_loss, batch_cov_in_graph=True),
        functools.partial(R.tico_reference, batch_cov_in_graph=True),
        True,
        kind="tico",
    ),
    LossCase(
        "vicreg_tico_graph",
        functools.partial(F.vicreg_tico_loss, batch_cov_in_graph=True),
        functools.partial(R.vicreg_tico_reference, batch_cov_in_graph=True),
        True,
        kind="vicreg_tico",
    ),
    LossCase(
        "vicreg_tico_proposal_graph",
        functools.partial(F.vicreg_tico_loss, variant="proposal", batch_cov_in_graph=True),
        functools.partial(R.vicreg_tico_proposal_reference, batch_cov_in_graph=True),
        True,
        kind="vicreg_tico_proposal",
    ),
]
CASE_IDS = [c.name for c in CASES]
