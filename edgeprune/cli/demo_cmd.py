"""``edgeprune demo``: train, compile, verify and bench a digits CNN with no input at all."""
from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli import cli, get_output, json_option


@cli.command("demo")
@click.option("-o", "--output", "output_dir", type=click.Path(path_type=Path), default=Path("edgeprune-out"),
              show_default=True, help="Where the model and artifacts go.")
@click.option("--target", "-t", default="x86-64", show_default=True, help="Device profile to compile for.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for data split and training.")
@json_option
@click.pass_context
def demo_command(ctx: click.Context, output_dir: Path, target: str, seed: int, json_mode: bool) -> None:
    """Train a small CNN on scikit-learn digits, save it as Keras 3, compile float32 and int8,
    and compare accuracy, agreement, size and latency (a few seconds, offline)."""
    from edgeprune.demo import run_demo

    out = get_output(ctx, json_mode)
    summary = run_demo(output_dir, target=target, seed=seed, output=out)
    out.emit_json(summary)
    if not out.json_mode:
        out.table(
            f"edgeprune demo: {summary['model']} ({summary['params']} params), {summary['test_samples']} "
            f"held-out digits, target {summary['target']}",
            ["quantization", "size bytes", "keras acc", "tflite acc", "agreement", "p50 ms"],
            [(r["quantization"], r["tflite_bytes"], f"{r['keras_accuracy']:.4f}",
              f"{r['tflite_accuracy']:.4f}", f"{r['agreement']:.4f}",
              "n/a" if r["latency_median_ms"] is None else f"{r['latency_median_ms']:.4g}")
             for r in summary["results"]],
        )
        out.info(f"Artifacts in {output_dir}/ ({summary['seconds']:.1f}s)")
