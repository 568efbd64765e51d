"""Known third-party warnings that flood training output, silenced one by one.

Each entry names the warning's category, the start of its message and the module that issues it,
so that any other warning (from these modules too) still shows. `quiet_third_party()` installs
the filters; training calls it first thing.
"""

from __future__ import annotations

import logging
import warnings

# (category, message regex matched from the message's start, module regex) as
# `warnings.filterwarnings` takes them.
THIRD_PARTY_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # torch deprecates these collectives in favour of `*_single`; DeepSpeed ZeRO calls them (ZeRO-3
    # on every reduce-scatter) and the warning, attributed to c10d_logger's wrapper, is printed
    # again on every call (plus its source line): 34,807 times in a 600-step stage-2 run.
    (
        FutureWarning,
        r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated",
        r"torch\.distributed\.c10d_logger\Z",
    ),
    # Trainer asks for pinned memory by default; without an accelerator torch says it ignores it,
    # once per process: once per rank and once per stage of a CPU run.
    (
        UserWarning,
        r"'pin_memory' argument is set as true but no accelerator is found",
        r"torch\.utils\.data\.dataloader\Z",
    ),
    # wandb's own error reporter reads a setting wandb deprecated: once per tracker call.
    (
        DeprecationWarning,
        r"Read the `app_url` setting from the appropriate Settings object",
        r"wandb\.analytics\.sentry\Z",
    ),
)


# (logger, start of the message) of third-party log records dropped the same way: torch logs
# this when DeepSpeed compiles or loads its CPU communication op, in every training process of a
# CPU-only machine, where there is no CUDA runtime to find.
THIRD_PARTY_LOG_RECORDS: tuple[tuple[str, str], ...] = (
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),
)


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_third_party() -> None:
    """Ignore exactly the warnings in `THIRD_PARTY_WARNINGS` and the log records in
    `THIRD_PARTY_LOG_RECORDS` (idempotent)."""
    for category, message, module in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, start in THIRD_PARTY_LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.start == start for f in logger.filters):
            logger.addFilter(_DropMessage(start))
