"""The op fuzz's sample (python_tests/test_fuzz.py) on the emulated CUDA kernels,
where memcheck makes a read past the end of a tensor an error."""

from test_fuzz import test_every_op_is_fuzzed, test_fuzz_ops, worker  # noqa: F401
