"""Evaluation of policies on math benchmarks (pass@k, maj@k)."""
