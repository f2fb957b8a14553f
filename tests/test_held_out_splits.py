"""Held-out slices of the training split (``validation-N``, ``train-minus-validation-N``): they partition the
training split, every reader of a prepared file accepts them, and bad names are refused naming the split."""

import numpy as np
import pytest

from gbm.cli import main
from gbm.data import RawDataset, load_prepared, save_prepared
from gbm.guidance import bank_images_from_file
from gbm.metrics.inputs import load_image_set


@pytest.fixture()
def prepared(tmp_path):
    rng = np.random.default_rng(0)
    raw = RawDataset(rng.integers(0, 256, (20, 1, 4, 4), dtype=np.uint8), np.arange(20, dtype=np.int64),
                     rng.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8), np.arange(6, dtype=np.int64), source="synthetic")
    return save_prepared(raw, "synthetic", tmp_path / "data.npz")


def test_validation_slice_is_the_last_training_images_and_disjoint_from_the_rest(prepared):
    data = load_prepared(prepared)
    train = data.images("train")
    np.testing.assert_array_equal(data.images("validation-5"), train[-5:])
    np.testing.assert_array_equal(data.images("train-minus-validation-5"), train[:-5])
    np.testing.assert_array_equal(data.labels("validation-5"), np.arange(15, 20))
    np.testing.assert_array_equal(data.labels("train-minus-validation-5"), np.arange(15))


def test_scoring_and_the_guidance_bank_read_the_held_out_slices(prepared):
    reference = load_image_set(f"{prepared}:validation-4")
    np.testing.assert_array_equal(reference.images, load_prepared(prepared).images("train")[-4:])
    assert reference.description.endswith(":validation-4")
    bank, source = bank_images_from_file(f"{prepared}:train-minus-validation-4")
    assert len(bank) == 16 and source["split"] == "train-minus-validation-4"


@pytest.mark.parametrize("split, message", [("validation-0", "N must lie in"), ("validation-20", "N must lie in"),
                                            ("valid", "unknown split 'valid'")])
def test_bad_held_out_split_is_refused_naming_it(prepared, split, message):
    with pytest.raises(ValueError, match=message):
        load_prepared(prepared).images(split)


def test_score_refuses_an_unknown_real_split_naming_the_flag(prepared, capsys):
    assert main(["score", "--real", str(prepared), "--real-split", "holdout", "--fake", str(prepared)]) == 2
    assert "--real-split: unknown split 'holdout'" in capsys.readouterr().err
