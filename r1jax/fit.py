"""`r1jax-fit`: does a run config fit its TPU slice? Shape-only AOT compiles, no TPU needed.

    r1jax-fit --config=configs/dapo_qwen2_5_32b.py --topology=v5p-256
    r1jax-fit --config=configs/x.py --topology=v5p:4x4x4 --preset qwen2.5-7b \\
        --config.rollout.max_slots=512

On any host with libtpu installed (`pip install 'jax[tpu]'`), XLA:TPU lowers and compiles the
programs a run executes (`r1jax.fit_programs`: the rollout's prefill and one decode step, the
whole rollout program, the log-prob pass over a microbatch, one update) for the slice's
topology, at the config's real shapes, on the mesh `cfg.mesh` asks for, from sharded
`jax.ShapeDtypeStruct`s: nothing is allocated and no weights are read. The slice is a gcloud
accelerator type (v5p-128, v5litepod-256, v6e-64, v4-64) or a topology (v5p:4x4x4); see
`r1jax.tpu_slices`.

Per program and chip it reports XLA's `memory_analysis()` (arguments, outputs, temporaries,
minus outputs aliased to donated arguments) plus the arrays resident beside the program
(train state, reference policy, rollout batch), against the chip's HBM, with the compiler's
FLOPs and time estimate; then a verdict. A program XLA refuses to compile for lack of HBM does
not fit (its row shows the temporaries the compiler asked for); one XLA fails to compile at
all does not run, and the verdict says so.

The architecture comes from model.path's config.json when it exists, else `--preset`, else
model.preset / model.arch, else the preset named by model.path's last component
(`r1jax.models.presets.preset_for_path`: /models/Qwen2.5-32B -> qwen2.5-32b).

`--fast` compiles with XLA's lowest execution-time optimization effort: ~3x faster, memory
figures within a few percent of the default compile (which is the trainer's).

Exit status: 0 everything fits, 1 something does not fit or compile, 2 usage error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Optional, Sequence

import jax

from r1jax.config import ConfigError, RunConfig, load_config
from r1jax.fit_programs import (COMPILE_FAILED, PROGRAMS, RL_PROGRAMS, FitUsageError,
                                ProgramFit, RunPrograms, build_sharding, compile_program,
                                resolve_model)
from r1jax.tpu_slices import GIB, LibtpuMissingError, SliceError, TpuSlice, parse_slice

__all__ = ["fit", "FitReport", "ProgramFit", "FitUsageError", "PROGRAMS", "RL_PROGRAMS",
           "main"]


@dataclasses.dataclass(frozen=True)
class FitReport:
    """`fit()`'s result: per-program bytes per chip against the slice's HBM.

    Attributes:
      config: the config spec (or "config" for a RunConfig given directly).
      slice: the TPU slice.
      mesh: mesh axis -> size as built over the slice.
      model: where the architecture came from, in words.
      programs: one ProgramFit per compiled program.
    """

    config: str
    slice: TpuSlice
    mesh: dict
    model: str
    programs: tuple[ProgramFit, ...]

    @property
    def hbm_bytes(self) -> int:
        return self.slice.hbm_bytes

    @property
    def fits(self) -> bool:
        return all(p.fits(self.hbm_bytes) for p in self.programs)

    @property
    def largest(self) -> ProgramFit:
        """The program with the most bytes per chip (resident arrays included)."""
        return max(self.programs, key=lambda p: p.total_bytes)

    def program(self, name: str) -> ProgramFit:
        return next(p for p in self.programs if p.name == name)

    @property
    def verdict(self) -> str:
        """"verdict: fits v5p-256 (largest: update 45.5 of 95.0 GiB per chip)", or "verdict:
        does not fit ..." naming each program that does not and its largest buffers."""
        hbm = self.hbm_bytes / GIB
        if self.fits:
            big = self.largest
            return (f"verdict: fits {self.slice.name} (largest: {big.name} "
                    f"{big.total_bytes / GIB:.1f} of {hbm:.1f} GiB per chip)")
        parts = []
        for p in self.programs:
            if p.error and p.error.startswith(COMPILE_FAILED):
                parts.append(f"{p.name}: {p.error}")
            elif not p.fits(self.hbm_bytes):
                named = [(n, b) for n, b in p.largest if b >= 0.05 * GIB][:4]
                parts.append(f"{p.name} {p.total_bytes / GIB:.1f} of {hbm:.1f} GiB per chip: "
                             + ", ".join(f"{n} {b / GIB:.1f} GiB"
                                         for n, b in [("temporaries", p.temp_bytes)] + named))
        failed = all(p.error and p.error.startswith(COMPILE_FAILED)
                     for p in self.programs if not p.fits(self.hbm_bytes))
        what = "does not compile for" if failed else "does not fit"
        return f"verdict: {what} {self.slice.name} ({'; '.join(parts)})"

    def table(self) -> str:
        """The per-program table and the verdict, as `r1jax-fit` prints them."""
        mesh = " x ".join(f"{k} {v}" for k, v in self.mesh.items())
        lines = [f"{self.config} on {self.slice.name} ({self.slice.topology}, "
                 f"{self.slice.chips} chip{'s' * (self.slice.chips > 1)}, "
                 f"{self.hbm_bytes / GIB:.1f} GiB HBM each), "
                 f"mesh {mesh}, model {self.model}",
                 f"{'GiB per chip':<12} {'args':>6} {'outputs':>7} {'temp':>7} {'aliased':>7} "
                 f"{'resident':>8} {'total':>7} {'TFLOP':>8} {'est. time':>10} "
                 f"{'compile':>8}  shapes"]
        gib = lambda b: f"{b / GIB:.2f}"
        for p in self.programs:
            est = "none" if p.seconds is None else f"{p.seconds * 1e3:.1f} ms"
            tflop = "none" if p.flops is None else f"{p.flops / 1e12:.2f}"
            lines.append(
                f"{p.name:<12} {gib(p.argument_bytes):>6} {gib(p.output_bytes):>7} "
                f"{gib(p.temp_bytes):>7} {gib(p.alias_bytes):>7} "
                f"{gib(sum(p.resident_bytes.values())):>8} {gib(p.total_bytes):>7} "
                f"{tflop:>8} {est:>10} {p.compile_seconds:>7.1f}s  {p.shapes}")
            if p.error:
                lines.append(f"{'':12} " + (p.error if p.error.startswith(COMPILE_FAILED)
                                             else f"XLA refused it: {p.error}"))
        lines.append(self.verdict)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The report as plain JSON-able values (`r1jax-fit --json`)."""
        return {"config": self.config, "slice": self.slice.name,
                "topology": self.slice.topology, "chips": self.slice.chips,
                "hbm_bytes": self.hbm_bytes, "mesh": self.mesh, "model": self.model,
                "fits": self.fits, "verdict": self.verdict,
                "programs": [dict(dataclasses.asdict(p), program_bytes=p.program_bytes,
                                  total_bytes=p.total_bytes) for p in self.programs]}


def fit(config: "str | RunConfig", topology: "str | TpuSlice", preset: Optional[str] = None,
        *, overrides: Sequence[str] = (), programs: Sequence[str] = RL_PROGRAMS,
        fast: bool = False) -> FitReport:
    """Compiles a run's programs for a TPU slice, shapes only, and measures them.

    Args:
      config: a config spec ("configs/x.py[:arg]", loaded with `overrides`) or a RunConfig.
      topology: a gcloud accelerator type ("v5p-128"), a topology ("v5p:4x4x4") or a
        TpuSlice.
      preset: the architecture when model.path has no config.json here (module docstring).
      overrides: absl-style config overrides ("rollout.max_slots=256").
      programs: which of PROGRAMS to compile: r1jax-train's (RL_PROGRAMS, the default;
        with "reward_model" added when the config scores with a reward model), "sft" for
        an r1jax-sft config (configs/sft/), or "dpo" for an r1jax-dpo config (configs/dpo/).
      fast: compile with the lowest optimization effort (module docstring).

    Returns:
      A FitReport: per program, XLA's bytes per chip, resident arrays, FLOPs and time
      estimate; `.fits`, `.verdict`, `.table()`.

    Raises:
      FitUsageError: an unknown preset or program, no architecture, a mesh the slice cannot
        hold.
      SliceError: not a TPU slice.
      LibtpuMissingError: libtpu is not installed.
      ConfigError: a bad config or override.
    """
    unknown = [p for p in programs if p not in PROGRAMS]
    if unknown:
        raise FitUsageError(f"unknown program '{unknown[0]}' (known: {', '.join(PROGRAMS)})")
    spec = config if isinstance(config, str) else "config"
    cfg = load_config(config, overrides) if isinstance(config, str) else config
    tpu = topology if isinstance(topology, TpuSlice) else parse_slice(topology)
    model, origin = resolve_model(cfg, preset)
    try:
        sharding = build_sharding(cfg, tpu.devices())
    except ValueError as e:
        raise FitUsageError(f"config.mesh on {tpu.name} ({tpu.chips} chips): {e}") from None
    built = RunPrograms(cfg, model, sharding)
    if tuple(programs) == RL_PROGRAMS and built.reward_models:
        programs = RL_PROGRAMS + ("reward_model",)  # the run scores with it every step
    fits = tuple(compile_program(getattr(built, name)(), fast) for name in programs)
    return FitReport(config=spec, slice=tpu, mesh=dict(sharding.mesh.shape), model=origin,
                     programs=fits)


USAGE = """usage: r1jax-fit --config=FILE[:ARG] --topology=SLICE [--preset NAME]
                 [--programs=prefill,decode,rollout,logprobs,update[,reward_model]
                  | --programs=sft | --programs=dpo]
                 [--fast] [--json]
                 [--config.KEY=VALUE ...]
  SLICE: a gcloud accelerator type (v5p-128, v5litepod-256, v6e-64, v4-64) or a topology
  (v5p:4x4x4)"""
_VALUED = ("--config", "--topology", "--preset", "--programs")


def parse_args(argv: Sequence[str]) -> dict:
    """The options of an r1jax-fit command line (argv without the program name).

    Raises:
      FitUsageError: an unknown argument, a missing value or a missing required option.
    """
    out: dict = {"config": None, "topology": None, "preset": None, "programs": None,
                 "fast": False, "json": False, "overrides": []}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("--config."):
            out["overrides"].append(arg[len("--config."):])
        elif arg in ("--fast", "--json"):
            out[arg[2:]] = True
        elif arg.split("=", 1)[0] in _VALUED:
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if not args:
                    raise FitUsageError(f"{arg} needs a value")
                value = args.pop(0)
            out[key] = value
        else:
            raise FitUsageError(f"unknown argument '{arg}'")
    for key in ("config", "topology"):
        if not out[key]:
            raise FitUsageError(f"--{key} is required")
    out["programs"] = tuple(out["programs"].split(",")) if out["programs"] else RL_PROGRAMS
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `r1jax-fit`; returns 0 (fits), 1 (does not fit or does not compile) or
    2 (usage error)."""
    argv = list(sys.argv if argv is None else argv)
    # Compile-only TPU devices are all it needs: never claim a local accelerator, and keep
    # these executables (built without a TPU client) out of the persistent compile cache.
    if "JAX_PLATFORMS" not in os.environ:
        jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        args = parse_args(argv[1:])
        report = fit(args["config"], args["topology"], args["preset"],
                     overrides=args["overrides"], programs=args["programs"],
                     fast=args["fast"])
    except (FitUsageError, SliceError, ConfigError, LibtpuMissingError) as e:
        print(f"r1jax-fit: {e}\n{USAGE}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=1) if args["json"] else report.table())
    return 0 if report.fits else 1


if __name__ == "__main__":
    raise SystemExit(main())
