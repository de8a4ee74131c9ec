"""Drop-in modules with other libraries' signatures, backed by sslext's fused ops.

* :mod:`sslext.compat.lightly`: ``VICRegLoss``, ``BarlowTwinsLoss`` and
  ``TiCoLoss`` with lightly 1.6's constructor arguments, defaults and forward
  semantics; switching is one import.

Nothing here imports the other library: the semantics are written out from its
documented behaviour and checked against formulas in the tests.
"""
