"""The selection-speed suite's quick variant: structure and sanity of what it writes."""

import json

from dualview.bench import selection as suite
from dualview.budget import resolve_budget


def test_selection_quick_writes_one_row_per_method_and_budget(tmp_path, capsys):
    suite.main(["--quick", "--out", str(tmp_path), "--threads", "1"])
    record = json.loads((tmp_path / "selection-cpu-quick.json").read_text())
    assert record["suite"] == "selection" and record["quick"] is True
    cells = {(r["method"], r["n"], r["budget"]) for r in record["rows"]}
    assert cells == {(m, 576, b) for m in ("pc-mmr", "mmr", "divprune", "dpp") for b in suite.BUDGETS}
    for row in record["rows"]:
        assert row["kept"] == resolve_budget(row["budget"], row["n"]) and row["ms"] > 0 and row["runs"] >= 1
    assert "pc-mmr" in capsys.readouterr().out
