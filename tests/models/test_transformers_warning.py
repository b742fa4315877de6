"""transformers' "PyTorch was not found" notice never reaches r1jax users; other transformers
warnings still do.

`make demo` installs no torch, so `import transformers` logs the notice. The test environment
has torch, so each case runs in a fresh interpreter whose import system cannot see torch
(every meta-path finder is wrapped to answer "no such module" for torch): transformers then
takes its genuine no-torch path and logs the notice through its own logger.
"""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTICE = "PyTorch was not found"

HIDE_TORCH = textwrap.dedent("""
    import sys

    class HideTorch:
        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                return None
            return self.finder.find_spec(name, path, target)

        def __getattr__(self, attr):  # find_distributions, invalidate_caches, ...
            return getattr(self.finder, attr)

    sys.meta_path[:] = [HideTorch(f) for f in sys.meta_path]
""")

OTHER_WARNING = textwrap.dedent("""
    from transformers.utils import logging as hf_logging
    hf_logging.get_logger("transformers.x").warning("another transformers warning")
    assert "torch" not in sys.modules
""")


def run_without_torch(body: str) -> str:
    """Runs HIDE_TORCH + body + OTHER_WARNING in a fresh interpreter; returns its stderr."""
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="warning")
    env.pop("TRANSFORMERS_NO_ADVISORY_WARNINGS", None)
    proc = subprocess.run([sys.executable, "-c", HIDE_TORCH + body + OTHER_WARNING],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_plain_transformers_import_logs_the_notice_without_torch():
    # The control: without r1jax's filter this environment does produce the notice.
    err = run_without_torch("import transformers\n")
    assert NOTICE in err
    assert "another transformers warning" in err


def test_char_tokenizer_hides_only_the_no_torch_notice():
    err = run_without_torch("from r1jax.models.char_tokenizer import make_char_tokenizer\n"
                            "assert make_char_tokenizer('0123').decode([7, 8]) == '01'\n")
    assert NOTICE not in err
    assert "another transformers warning" in err


def test_load_tokenizer_hides_only_the_no_torch_notice(tmp_path):
    # load_tokenizer is the first importer of transformers here (the files come from disk).
    from r1jax.models.char_tokenizer import make_char_tokenizer
    make_char_tokenizer("0123").save_pretrained(str(tmp_path))
    err = run_without_torch("from r1jax.models.tokenizer import load_tokenizer\n"
                            f"assert load_tokenizer({str(tmp_path)!r}).decode([7, 8]) == '01'\n")
    assert NOTICE not in err
    assert "another transformers warning" in err
