"""Copy the suites' markdown tables into the README: ``python -m dualview.bench readme``.

Each suite writes ``results/<suite>.md`` (command, date, machine, model, tables). In the README
the generated part of a suite's subsection sits between ``<!-- bench:<suite> -->`` and
``<!-- /bench:<suite> -->``; this command replaces exactly that part, so the hand-written text
around it stays. A suite whose ``.md`` is missing keeps its old table.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

FIGURES = {"accuracy": "accuracy-curve", "error": "error-curves"}


def generated(suite: str, results: Path) -> str | None:
    """The block for ``suite``: its markdown tables, then its figure (PNG if present, with the HTML)."""
    table = results / f"{suite}.md"
    if not table.exists():
        return None
    text = table.read_text().rstrip() + "\n"
    figure = FIGURES.get(suite)
    if figure and (results / f"{figure}.png").exists():
        text += f"\n![{suite}]({results.name}/{figure}.png)\n\nInteractive: `{results.name}/{figure}.html`.\n"
    elif figure and (results / f"{figure}.html").exists():
        text += f"\nFigure: `{results.name}/{figure}.html`.\n"
    return text


def update(readme: Path, results: Path) -> list[str]:
    """Rewrite the marked blocks of ``readme``; returns the suites updated."""
    text = readme.read_text()
    done = []
    for suite in ("accuracy", "error", "prefill", "scale", "browser"):
        block = generated(suite, results)
        pattern = re.compile(rf"(<!-- bench:{suite} -->\n).*?(<!-- /bench:{suite} -->)", re.S)
        if block is None or not pattern.search(text):
            continue
        text = pattern.sub(lambda m: m.group(1) + block + m.group(2), text)
        done.append(suite)
    readme.write_text(text)
    return done


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--results", default="results")
    args = parser.parse_args(argv)
    done = update(Path(args.readme), Path(args.results))
    print(f"updated {', '.join(done) or 'nothing'} in {args.readme}")


if __name__ == "__main__":
    main()
