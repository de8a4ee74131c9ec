"""The application built on the sslext library: configs, the trainer and its methods, sweeps, reports, the CLI.

The library (the ops, losses, references, compat modules, models, data,
evaluation, distributed helpers at the top of :mod:`sslext`) never imports this
package; ``python_tests/test_imports.py`` checks it. The public entry module of
the trainer is :mod:`sslext.train`.
"""
