"""What the controller asks a runner to do, and the files that go with it."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

RUNNER_PATH = Path(__file__).with_name("runner.py")
EVAL_X = "eval_x.npy"


def model_name(index: int) -> str:
    """Name of the index-th timed model on the device (no user file name reaches it)."""
    return f"timed-{index:05d}.tflite"


@dataclass(frozen=True)
class RunRequest:
    """One benchmark job: the same for every device except the thread counts.

    ``models``: further .tflite files to time one by one (latency tables, per-layer timing);
    with no ``artifact`` the job only times them.
    """

    artifact: Path | None
    sha256: str | None
    threads: tuple[int, ...] = (1,)
    runs: int = 50
    warmup: int = 5
    min_duration_s: float = 0.0
    seed: int = 0
    eval_x: Path | None = None
    extra: dict = field(default_factory=dict)
    models: tuple[Path, ...] = ()

    def with_threads(self, threads) -> RunRequest:
        return replace(self, threads=tuple(threads)) if threads else self

    def files(self) -> dict[str, Path]:
        """Name on the device -> local file, for the remote working directory."""
        files = {"runner.py": RUNNER_PATH}
        if self.artifact is not None:
            files[self.artifact.name] = self.artifact
        files.update({model_name(i): path for i, path in enumerate(self.models)})
        if self.eval_x is not None:
            files[self.eval_x.name] = self.eval_x
        return files

    def job(self, *, remote: bool, outputs_path: Path | None = None) -> dict:
        """The runner's JSON job; remote jobs use names relative to the device's temp dir."""
        def where(local: Path | None, name: str):
            if local is None:
                return None
            return name if remote else str(local)

        job = {
            "artifact": None if self.artifact is None else self.artifact.name if remote else str(self.artifact),
            "threads": list(self.threads),
            "runs": self.runs,
            "warmup": self.warmup,
            "min_duration_s": self.min_duration_s,
            "seed": self.seed,
            "eval_inputs": where(self.eval_x, self.eval_x.name if self.eval_x else EVAL_X),
            "watch_stdin": True,
        }
        if job["artifact"] is None:
            del job["artifact"]
        if self.models:
            job["time_models"] = [model_name(i) if remote else str(p) for i, p in enumerate(self.models)]
        if outputs_path is not None:
            job["outputs_path"] = str(outputs_path)
        job.update(self.extra)
        return job
