"""The search's picture: accuracy against latency (or size) with the budgets and the pick.

One drawing (``pareto_figure``) serves the search's ``pareto.png`` and the report's "Search"
section. The study's Pareto front (edgeprune.search.study.pareto) is taken on three objectives,
accuracy, latency and size; projected onto the two plotted axes it is not a front: a trial kept
for being small can be slower *and* less accurate than another. So the line drawn is the 2-D
staircase of the plotted axes only (``front_2d``: feasible trials no other feasible trial beats
on both), and the 3-objective front's trials are marked apart with rings.
"""
from __future__ import annotations

import io
from pathlib import Path

FRONT_LINE_GID = "pareto-2d"  # the staircase Line2D's gid, for whoever reads the figure back


def front_2d(points) -> list[tuple[float, float]]:
    """The (x, y) pairs no other pair beats on both lower x and higher y, x ascending (ties and
    repeats collapse to one point)."""
    out: list[tuple[float, float]] = []
    for x, y in sorted(set(points), key=lambda p: (p[0], -p[1])):
        if not out or y > out[-1][1]:
            out.append((x, y))
    return out


def pareto_figure(trial_rows: list[dict], front: list[dict], chosen: dict | None, config: dict, *,
                  chosen_label: str = "picked"):
    """(matplotlib Figure, what was drawn): every completed trial, the 2-D front of the plotted
    axes, the 3-objective front's trials, the budget lines and the chosen trial (a star).

    What was drawn: ``axis`` ("latency_ms" or "model_bytes"), ``front_2d`` (the staircase's
    points, accuracy in %), ``plotted``/``within``/``over`` counts and ``left_out`` (why trials
    are not on the plot). The title says the same counts.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in trial_rows if r["state"] == "COMPLETE" and r["accuracy"] is not None
            and r.get("same_as") is None]
    use_latency = any(r.get("latency_ms") is not None for r in done)
    key, label = ("latency_ms", "latency, ms") if use_latency else ("model_bytes", "model size, bytes")

    def x_of(r):
        m = r.get("latency_measured")
        return m["latency_ms"] if use_latency and m else r.get(key)

    def y_of(r):
        return 100.0 * r["accuracy"]

    shown = [r for r in done if x_of(r) is not None]
    ok = [r for r in shown if r["feasible"]]
    bad = [r for r in shown if not r["feasible"]]
    left_out = {
        "duplicate": sum(1 for r in trial_rows if r["state"] == "COMPLETE" and r.get("same_as") is not None),
        "not completed": sum(1 for r in trial_rows if r["state"] != "COMPLETE"),
        "no accuracy": sum(1 for r in trial_rows if r["state"] == "COMPLETE" and r["accuracy"] is None),
        f"no {key}": len(done) - len(shown),
    }
    left_out = {k: v for k, v in left_out.items() if v}

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110, layout="constrained")
    ax.scatter([x_of(r) for r in ok], [y_of(r) for r in ok], s=18, c="tab:blue", label="within budgets")
    ax.scatter([x_of(r) for r in bad], [y_of(r) for r in bad], s=18, c="tab:gray", marker="x",
               label="over a budget")
    stairs = front_2d((x_of(r), y_of(r)) for r in ok)
    if stairs:
        ax.step([p[0] for p in stairs], [p[1] for p in stairs], where="post", c="tab:orange", gid=FRONT_LINE_GID,
                label=f"front on accuracy and {key.split('_')[0]} ({len(stairs)})")
    full = [r for r in front if x_of(r) is not None]
    if full:
        ax.scatter([x_of(r) for r in full], [y_of(r) for r in full], s=80, facecolors="none",
                   edgecolors="tab:orange", linewidths=1.2,
                   label=f"front on accuracy, latency and size ({len(full)})")
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
        ax.axhline(100.0 * base - drop, c="tab:red", ls=":", lw=1, label=f"accuracy budget (-{drop:g} pt)")
    if base is not None:
        ax.axhline(100.0 * base, c="k", lw=0.6, alpha=0.5, label=f"unpruned model {100.0 * base:.2f} %")
    if chosen is not None and x_of(chosen) is not None:
        ax.scatter([x_of(chosen)], [y_of(chosen)], s=160, marker="*", c="gold", edgecolors="k",
                   zorder=5, label=f"{chosen_label}: trial {chosen['number']}")
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy, % (artifact, validation data)")
    title = (f"{config.get('target', '')}: {len(shown)} of {len(trial_rows)} trials shown "
             f"({len(ok)} within budgets, {len(bad)} over)")
    if left_out:
        title += "\nleft out: " + ", ".join(f"{v} {k}" for k, v in left_out.items())
    if config.get("sampler"):
        title += f"; sampler {config['sampler']}"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    drawn = {"axis": key, "front_2d": stairs, "plotted": len(shown), "within": len(ok), "over": len(bad),
             "left_out": left_out}
    return fig, drawn


def plot_pareto(trial_rows: list[dict], front: list[dict], chosen: dict | None, config: dict,
                path: Path) -> Path:
    """Write ``pareto_figure`` as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    from edgeprune.base.artifacts import write_bytes_atomic

    fig, _ = pareto_figure(trial_rows, front, chosen, config)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    write_bytes_atomic(Path(path), buf.getvalue())
    return Path(path)
