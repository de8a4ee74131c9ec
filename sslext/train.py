"""The public entry module of the trainer: ``python -m sslext.train`` and ``from sslext.train import Trainer``.

The one module of the application (:mod:`sslext.app`) kept at the top of the
package, so the documented command line and imports stay stable; it only
re-exports. The command line, its exit codes and the run directory it writes
are described in :mod:`sslext.app.train`; the trainer in :mod:`sslext.app.training`.
"""

from __future__ import annotations

from .app.train import (  # noqa: F401
    CHECKPOINT_VERSION,
    EXIT_INTERRUPTED,
    CheckpointMismatchError,
    NonFiniteLossError,
    RunExistsError,
    Trainer,
    __all__,  # noqa: F401
    _FaultInjector,
    build_arg_parser,
    build_everything,
    load_checkpoint_file,
    main,
    resolve_device,
    short_summary,
    train,
)

if __name__ == "__main__":
    raise SystemExit(main())
