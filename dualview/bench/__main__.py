"""``python -m dualview.bench <suite> [options]``: run one benchmark suite (see each module)."""

import importlib
import sys

SUITES = {
    "accuracy": "dualview.bench.accuracy",
    "app": "dualview.bench.app",
    "browser": "dualview.bench.browser",
    "error": "dualview.bench.error",
    "prefill": "dualview.bench.prefill",
    "readme": "dualview.bench.readme",
    "scale": "dualview.bench.scale",
    "selection": "dualview.bench.selection",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in SUITES:
        print(f"usage: python -m dualview.bench {{{','.join(SUITES)}}} [options]  (--help after the suite for its options)")
        sys.exit(2)
    importlib.import_module(SUITES[sys.argv[1]]).main(sys.argv[2:])


if __name__ == "__main__":
    main()
