"""The search's picture: accuracy against latency (or size) with the budgets and the pick."""
from __future__ import annotations

import io
from pathlib import Path


def plot_pareto(trial_rows: list[dict], front: list[dict], chosen: dict | None, config: dict,
                path: Path) -> Path:
    """Write a PNG: every completed trial, the feasible Pareto front, the latency budget line,
    the lowest accuracy the accuracy budget allows, and the picked trial (a star)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeprune.artifacts import write_bytes_atomic

    done = [r for r in trial_rows if r["state"] == "COMPLETE" and r["accuracy"] is not None
            and r["same_as"] is None]
    use_latency = any(r["latency_ms"] is not None for r in done)
    key, label = ("latency_ms", "latency (ms)") if use_latency else ("model_bytes", "model size (bytes)")

    def x_of(r):
        m = r.get("latency_measured")
        return m["latency_ms"] if use_latency and m else r[key]

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ok = [r for r in done if r["feasible"]]
    bad = [r for r in done if not r["feasible"]]
    ax.scatter([x_of(r) for r in ok], [r["accuracy"] for r in ok], s=18, c="tab:blue", label="within budgets")
    ax.scatter([x_of(r) for r in bad], [r["accuracy"] for r in bad], s=18, c="tab:gray", marker="x",
               label="over a budget")
    if front:
        pts = sorted((x_of(r), r["accuracy"]) for r in front)
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", c="tab:orange", label="Pareto front")
    budgets = config.get("budgets") or {}
    if use_latency and budgets.get("max_latency_ms"):
        ax.axvline(budgets["max_latency_ms"], c="tab:red", ls="--", lw=1,
                   label=f"latency budget {budgets['max_latency_ms']:g} ms")
    if not use_latency and budgets.get("max_model_bytes"):
        ax.axvline(budgets["max_model_bytes"], c="tab:red", ls="--", lw=1, label="size budget")
    base = (config.get("baseline") or {}).get("accuracy")
    drop = (config.get("base") or {}).get("max_accuracy_drop")
    if drop is None:
        drop = budgets.get("max_accuracy_drop")
    if base is not None and drop is not None:
        ax.axhline(base - drop / 100.0, c="tab:red", ls=":", lw=1, label=f"accuracy budget (-{drop:g} pt)")
    if base is not None:
        ax.axhline(base, c="k", lw=0.6, alpha=0.5, label=f"unpruned model {base:.4f}")
    if chosen is not None:
        ax.scatter([x_of(chosen)], [chosen["accuracy"]], s=160, marker="*", c="gold", edgecolors="k",
                   zorder=5, label=f"picked: trial {chosen['number']}")
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy (artifact, validation data)")
    ax.set_title(f"{config.get('target', '')}: {len(done)} trials ({config.get('sampler', '')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(Path(path), buf.getvalue())
    return Path(path)
