"""Where the shared public data lives (never copied into the repository)."""

import os
from typing import Optional

MISSING = ("shared data not found: set R1JAX_DATA_DIR to the folder holding gsm8k/, math500/, "
           "qwen25_math_eval/ and tokenizers/ (../shared/data beside the checkout)")


def find() -> Optional[str]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for path in (os.environ.get("R1JAX_DATA_DIR"), os.path.join(here, "..", "shared", "data"),
                 "/work/shared/data"):
        if path and os.path.isdir(os.path.join(path, "math500")):
            return os.path.abspath(path)
    return None
