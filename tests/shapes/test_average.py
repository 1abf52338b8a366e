"""Weight averaging of two exports (dualview.shapes.average): exact against a float64 reference."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dualview.shapes import average as A


def _export(d, state, config=None):
    d.mkdir()
    save_file(state, d / A.WEIGHTS)
    (d / "config.json").write_text(json.dumps(config or {"model_type": "llava", "layers": 2}))
    (d / "tokenizer.json").write_text('{"tok": 1}')
    (d / "README.md").write_text("card")
    return d


def _states(seed=0):
    g = torch.Generator().manual_seed(seed)
    a = {"w": torch.randn(8, 5, generator=g).half(), "b": torch.randn(5, generator=g).half()}
    b = {"w": torch.randn(8, 5, generator=g).half(), "b": torch.randn(5, generator=g).half()}
    return a, b


def test_average_is_the_interpolation_in_every_tensor():
    a, b = _states()
    assert all(A.average_state(a, b, 0.0)[k].equal(a[k]) for k in a)
    assert all(A.average_state(a, b, 1.0)[k].equal(b[k]) for k in a)
    for w in (0.5, 0.25):
        got = A.average_state(a, b, w)
        for k in a:
            ref = ((1 - w) * a[k].double() + w * b[k].double()).half()
            assert got[k].dtype == torch.float16 and got[k].equal(ref), k


def test_average_exports_writes_a_loadable_export(tmp_path):
    a, b = _states(1)
    da, db = _export(tmp_path / "a", a), _export(tmp_path / "b", b)
    out = A.average_exports(da, db, 0.5, tmp_path / "out")
    got = load_file(out / A.WEIGHTS)
    assert all(got[k].equal(((a[k].double() + b[k].double()) / 2).half()) for k in a)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", A.WEIGHTS, "tokenizer.json"]  # no card
    assert (out / "config.json").read_bytes() == (da / "config.json").read_bytes()


def test_bad_averages_give_one_clear_line_and_write_nothing(tmp_path, capsys):
    a, b = _states(2)
    da = _export(tmp_path / "a", a)
    cases = [
        (["--weight", "1.5"], _export(tmp_path / "b", b), "weight 1.5: the share of the second model, in [0, 1]"),
        (["--weight", "nan"], tmp_path / "b", "weight nan: the share of the second model"),
        ([], tmp_path / "missing", "no exported model there"),
        ([], _export(tmp_path / "c", b, {"model_type": "llava", "layers": 3}), "not the same architecture (their config.json differ)"),
        ([], _export(tmp_path / "d", {**b, "extra": torch.zeros(1).half()}), "tensor 'extra' is in only one of the two"),
        ([], _export(tmp_path / "e", {**b, "b": torch.zeros(6).half()}), "tensor 'b' is (5,) in one and (6,) in the other"),
    ]
    for extra, other, message in cases:
        with pytest.raises(SystemExit) as e:
            A.main([str(da), str(other), "--out", str(tmp_path / "out"), *extra])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "out").exists()
    broken = _export(tmp_path / "f", b)
    (broken / A.WEIGHTS).write_bytes((broken / A.WEIGHTS).read_bytes()[:40])  # truncated
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "README.md").write_text("an older card")
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for other, out, message in [
        (broken, tmp_path / "out", f"{broken / A.WEIGHTS}: not a readable safetensors file"),
        (tmp_path / "b", da, "would write into an input"),
        (tmp_path / "b", da / "sub", "would write into an input"),
        (tmp_path / "b", tmp_path / "full", "already exists and is not an empty directory"),
        (tmp_path / "b", tmp_path / "file", "already exists and is not an empty directory"),
        (tmp_path / "b", tmp_path / "dangling", "already exists and is not an empty directory"),
        (tmp_path / "b", tmp_path / "file" / "sub", "cannot write there"),
    ]:
        with pytest.raises(SystemExit) as e:
            A.main([str(da), str(other), "--out", str(out)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() and not (da / "sub").exists()
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["README.md"]
    assert load_file(da / A.WEIGHTS)["w"].equal(a["w"])
    (tmp_path / "empty").mkdir()  # an empty directory is a fine --out
    A.main([str(da), str(tmp_path / "b"), "--out", str(tmp_path / "empty"), "--weight", "-0"])
    assert "+ 0 x" in capsys.readouterr().out
    assert load_file(tmp_path / "empty" / A.WEIGHTS)["w"].equal(a["w"])
