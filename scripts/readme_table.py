"""Where the coverage scripts put a table they measured: stdout, optionally a JSON file of the
rows, and the README between a pair of markers (one place, so both tables are written alike)."""
from __future__ import annotations

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def publish(text: str, rows, *, start: str, end: str, json_path: str | None = None, readme: bool = True) -> None:
    """Print ``text``; write ``rows`` to ``json_path``; replace what stands between ``start`` and
    ``end`` in the README with ``text`` (markers missing: the README is left alone)."""
    print(text)
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=2))
    if not readme:
        return
    body = README.read_text()
    if start in body and end in body:
        body = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{text}\n{end}", body, flags=re.S)
        README.write_text(body)
