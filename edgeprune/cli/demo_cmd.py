"""``edgeprune demo``: train, prune, compile, bench and verify a digits CNN with no input at all."""
from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli import cli, get_output, json_option


def _with_interval(value, lo_hi, scale: float = 1.0) -> str:
    text = f"{value * scale:.1f}"
    return text if lo_hi is None else f"{text} ({lo_hi[0] * scale:.1f} to {lo_hi[1] * scale:.1f})"


def _k(n: int) -> str:
    return f"{n / 1000:.0f}k" if n >= 10000 else str(n)


@cli.command("demo")
@click.option("-o", "--output", "output_dir", type=click.Path(path_type=Path), default=Path("edgeprune-out"),
              show_default=True, help="Where the model and artifacts go.")
@click.option("--target", "-t", default="x86-64", show_default=True, help="Device profile to compile for.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for data split and training.")
@json_option
@click.pass_context
def demo_command(ctx: click.Context, output_dir: Path, target: str, seed: int, json_mode: bool) -> None:
    """Train a small CNN on scikit-learn digits (saved as Keras 3), prune it to half its MACs
    with fine-tuning and distillation, compile dense and pruned to float32 and int8, then bench
    and verify all four on test digits no step saw (under a minute, offline)."""
    from edgeprune.pipelines.demo import run_demo

    out = get_output(ctx, json_mode)
    summary = run_demo(output_dir, target=target, seed=seed, output=out)
    out.emit_json(summary)
    if not out.json_mode:
        out.table(
            f"edgeprune demo: {summary['model']} ({summary['params']} params, Keras accuracy "
            f"{summary['keras_accuracy'] * 100:.1f}%), {summary['test_samples']} test digits, target {summary['target']}",
            ["model", "quant", "acc % (95% CI)", "drop pts (95% CI)", "bytes", "MACs", "p50 ms"],
            [(r["model"], r["quantization"], _with_interval(r["accuracy"], r["accuracy_ci95"], 100.0),
              _with_interval(r["drop_vs_keras_points"], r["drop_ci95"]), f"{r['tflite_bytes']:,}", _k(r["macs"]),
              "n/a" if r["latency_median_ms"] is None else f"{r['latency_median_ms']:.3f}")
             for r in summary["results"]],
            compact=True,
        )
        out.info("drop: points below the Keras model on the same test digits (paired bootstrap 95% CI). "
                 "The pruned compiles passed their accuracy gate on validation digits that early "
                 "stopping and distillation never selected on (report.json: accuracy_gate.drop_ci95).")
        out.info(f"Artifacts in {output_dir}/ ({summary['seconds']:.1f}s)")
