"""The example scenes shipped in ``assets/examples/`` (PNG + JSON sidecar with question, answer,
objects and evidence boxes, written by :func:`dualview.shapes.world.write_examples`)."""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "examples"


def load_examples(directory: str | Path = EXAMPLES_DIR) -> list[dict]:
    """Every example as ``{"path", "question", "answer", "evidence", "size", ...}``, sorted by name.

    A directory without examples gives an empty list; a sidecar whose image is missing is skipped.
    """
    directory = Path(directory)
    examples = []
    for sidecar in sorted(directory.glob("*.json")):
        meta = json.loads(sidecar.read_text())
        image = directory / meta.get("image", sidecar.with_suffix(".png").name)
        if image.is_file():
            examples.append(dict(meta, path=str(image), name=sidecar.stem))
    return examples
