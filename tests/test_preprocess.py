"""The shared preprocessing rule: square views, several views side by side, and what the rule records."""

import numpy as np
import pytest

from planner.preprocess import Preprocessing, preprocess_image


def _gradient(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_one_view_dict_is_unchanged_so_old_stores_keep_their_fingerprint():
    assert Preprocessing(size=64).to_dict() == {"size": 64, "crop": "center"}
    assert Preprocessing.from_dict({"size": 64}) == Preprocessing(size=64)
    two = Preprocessing(size=64, views=2)
    assert two.to_dict() == {"size": 64, "crop": "center", "views": 2}
    assert Preprocessing.from_dict(two.to_dict()) == two
    assert two.shape == (64, 128, 3)


def test_each_view_is_preprocessed_on_its_own():
    """A 2-view 96 x 192 image -> 32 x 64: each half resized by the one-view rule, never mixed."""
    left, right = _gradient(96, 96, 0), _gradient(96, 96, 1)
    rule = Preprocessing(size=32, views=2)
    out = preprocess_image(np.concatenate([left, right], axis=1), rule)
    one = Preprocessing(size=32)
    assert out.shape == (32, 64, 3)
    np.testing.assert_array_equal(out[:, :32], preprocess_image(left, one))
    np.testing.assert_array_equal(out[:, 32:], preprocess_image(right, one))
    already = np.concatenate([left[:32, :32], right[:32, :32]], axis=1)
    np.testing.assert_array_equal(preprocess_image(already, rule), already)


@pytest.mark.parametrize("kwargs, match", [(dict(views=0), "views must be an int in 1..8"),
                                           (dict(views=True), "views must be an int"),
                                           (dict(size=4), "size must be >= 8")])
def test_bad_rules_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Preprocessing(**kwargs)


def test_an_image_that_cannot_hold_the_views_is_refused():
    with pytest.raises(ValueError, match="width must be divisible by 2"):
        preprocess_image(_gradient(64, 127, 0), Preprocessing(size=64, views=2))
