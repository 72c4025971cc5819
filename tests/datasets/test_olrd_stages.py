"""The model stages' batch fallback: one failing item is isolated, the rest of the batch survives."""

from __future__ import annotations

from magiceraser.datasets.stages import _batch_or_each


def test_batch_or_each_isolates_the_failing_item():
    calls = []

    def caption(images, questions):
        calls.append(len(images))
        if "bad" in images:
            raise ValueError("cannot decode")
        return [f"{im}:{q}" for im, q in zip(images, questions)]

    out = _batch_or_each(caption, ["a", "bad", "c"], ["x", "y", "z"])
    assert out[0] == "a:x" and out[2] == "c:z"
    assert isinstance(out[1], ValueError)
    assert calls == [3, 1, 1, 1]  # whole batch once, then one by one
    calls.clear()
    assert _batch_or_each(caption, ["a", "b"], ["x", "y"]) == ["a:x", "b:y"]
    assert calls == [2]  # no retry when the batch succeeds
