"""Chunked nearest neighbours agree with the full distance matrix."""

import numpy as np

from gbm.metrics import nearest_neighbours


def test_chunked_nearest_neighbours_match_the_full_distance_matrix():
    rng = np.random.default_rng(0)
    queries, references = rng.normal(size=(37, 16)), rng.normal(size=(101, 16))
    indices, distances = nearest_neighbours(queries, references, 4, query_chunk=8, reference_chunk=10)
    full = np.linalg.norm(queries[:, None] - references[None], axis=2)
    expected = np.argsort(full, axis=1)[:, :4]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(distances, np.take_along_axis(full, expected, 1), rtol=1e-5)


def test_an_image_in_the_references_is_its_own_nearest_neighbour_at_distance_zero():
    references = np.random.default_rng(1).integers(0, 256, (50, 1, 8, 8)).astype(np.float32)
    indices, distances = nearest_neighbours(references[[3, 17]], references, 2, reference_chunk=7)
    assert indices[:, 0].tolist() == [3, 17] and np.allclose(distances[:, 0], 0)
