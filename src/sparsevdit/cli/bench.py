"""``sparsevdit bench kernels`` and ``bench e2e``: the GPU benchmarks, with their own option parsers."""

from __future__ import annotations

import typer

# The bench commands pass every argument, --help included, to the benchmark's own parser (the same one
# `python bench/kernels.py` / `python bench/e2e.py` use), so both spellings take the same options.
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def register(app: typer.Typer) -> None:
    bench_app = typer.Typer(help="GPU benchmarks: attention kernels (`bench kernels`), whole-model speed (`bench e2e`).")
    app.add_typer(bench_app, name="bench")

    @bench_app.command("kernels", context_settings=_PASS_THROUGH, add_help_option=False)
    def bench_kernels(ctx: typer.Context) -> None:
        """cuDNN dense SDPA vs sparse backends at several densities; --calibrate: the cost model's table (GPU; --help)."""
        from ..bench.kernels import main

        raise typer.Exit(main(ctx.args, prog="sparsevdit bench kernels"))

    @bench_app.command("e2e", context_settings=_PASS_THROUGH, add_help_option=False)
    def bench_e2e(ctx: typer.Context) -> None:
        """One Wan2.1 transformer forward (1.3B at 480p, 14B at 720p), dense cuDNN vs sparse plans (GPU; --help)."""
        from ..bench.e2e import main

        raise typer.Exit(main(ctx.args, prog="sparsevdit bench e2e"))
