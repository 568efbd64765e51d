"""`quiet_third_party` drops exactly the known third-party noise, nothing else."""

from __future__ import annotations

import logging
import warnings

from vitsplit_vlm.quiet import quiet_third_party


def test_known_log_record_dropped_others_kept(caplog):
    quiet_third_party()
    quiet_third_party()  # idempotent: one filter
    logger = logging.getLogger("torch.utils.cpp_extension")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger="torch.utils.cpp_extension"):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        logger.warning("Error building extension 'x'")
    assert [r.getMessage() for r in caplog.records] == ["Error building extension 'x'"]


def test_known_warning_ignored_only_from_its_module():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        message = "`torch.distributed.reduce_scatter_tensor` is deprecated. Use the single one."
        warnings.warn_explicit(
            message, FutureWarning, "c10d_logger.py", 1, "torch.distributed.c10d_logger"
        )
        warnings.warn_explicit(message, FutureWarning, "mine.py", 1, "my.module")
        warnings.warn_explicit(
            "something else", FutureWarning, "c10d_logger.py", 1, "torch.distributed.c10d_logger"
        )
    assert [(str(w.message), w.filename) for w in caught] == [
        (message, "mine.py"),
        ("something else", "c10d_logger.py"),
    ]
