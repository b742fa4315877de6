"""Keeps transformers' "PyTorch was not found" notice away from r1jax users.

r1jax uses only transformers' tokenizers and config classes, which need no PyTorch, yet
`import transformers` without torch logs "PyTorch was not found. Models won't be available
and only tokenizers, configuration and file/data utilities can be used." That one record is
dropped; every other transformers message still reaches the user.
"""

from __future__ import annotations

import logging

NO_TORCH_NOTICE = "PyTorch was not found"


class NoTorchNoticeFilter(logging.Filter):
    """Drops the records of transformers' import-time notice that PyTorch is missing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return NO_TORCH_NOTICE not in record.getMessage()


def hide_no_torch_notice() -> None:
    """Installs NoTorchNoticeFilter on the "transformers" logger (once); call it before the
    first `import transformers`, which is when the notice is logged."""
    logger = logging.getLogger("transformers")
    if not any(isinstance(f, NoTorchNoticeFilter) for f in logger.filters):
        logger.addFilter(NoTorchNoticeFilter())
