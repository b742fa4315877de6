"""r1jax.data and r1jax.rewards never import the model code (nor, for rewards, JAX)."""

import os
import subprocess
import sys
import textwrap

import r1jax


def test_no_model_imports():
    # A stub `r1jax` package skips r1jax/__init__.py (which imports the models on purpose),
    # so only what data/ and rewards/ import themselves is loaded.
    script = textwrap.dedent(f"""
        import sys, types
        package = types.ModuleType("r1jax")
        package.__path__ = [{os.path.dirname(r1jax.__file__)!r}]
        sys.modules["r1jax"] = package
        import r1jax.rewards
        assert "jax" not in sys.modules, "rewards imported jax"
        import r1jax.data
        bad = sorted(m for m in sys.modules if m.startswith(("r1jax.models", "r1jax.rl",
                                                              "r1jax.sampling", "flax")))
        assert not bad, bad
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
