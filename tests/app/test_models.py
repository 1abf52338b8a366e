"""The app's shared models: loaded once, at most two kept."""

from tests.engine_tiny import tiny_dir


def test_the_app_keeps_at_most_two_models_loaded():
    """Visitors naming model after model cannot fill memory: the least recently used one goes."""
    from dualview.app.models import ModelHolder

    holder = ModelHolder(device="cpu", capacity=2)
    llava, next_, qwen = (tiny_dir(f) for f in ("llava", "llava_next", "qwen2_vl"))
    first = holder.get(llava)
    holder.get(next_)
    assert holder.get(llava) is first  # still loaded, and now the most recent
    holder.get(qwen)  # evicts llava_next, the least recently used
    assert set(holder._sessions) == {llava, qwen}
    assert holder.get(llava) is first
