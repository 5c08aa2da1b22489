"""The ISBI 2012 challenge metrics against the challenge's own evaluator (docs/spec.md section 6)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import METRICS_REFERENCE_DIR
from paper_unet import metrics

PER_THRESHOLD = ["pixel_fscore_per_threshold", "rand_fscore_per_threshold",
                 "warping_error_per_threshold", "vrand_thinned_per_threshold",
                 "vinfo_thinned_per_threshold"]
OPTIMA = ["pixel_error", "rand_error", "warping_error", "vrand_thinned", "vinfo_thinned"]


def reference_cases():
    path = METRICS_REFERENCE_DIR / "reference_values.json"
    if not path.is_file():
        return []
    return sorted(json.loads(path.read_text()).items())


@pytest.mark.parametrize("case, expected", reference_cases(), ids=lambda c: c if isinstance(c, str) else "")
def test_reproduces_the_challenge_evaluator(case, expected):
    proposal = tifffile.imread(METRICS_REFERENCE_DIR / f"{case}_prob.tif")
    truth = tifffile.imread(METRICS_REFERENCE_DIR / f"{case}_gt.tif")
    result = metrics.evaluate(proposal, truth).as_dict()
    for key in PER_THRESHOLD:  # printed with 10 decimals
        np.testing.assert_allclose(result[key], expected[key], rtol=0, atol=1e-9, err_msg=key)
    for key in OPTIMA:  # printed at full double precision
        assert result[key] == pytest.approx(expected[key], rel=0, abs=1e-12), key


def test_reference_cases_are_present():
    assert len(reference_cases()) == 10, f"expected 10 reference cases in {METRICS_REFERENCE_DIR}"


def test_single_metric_functions_agree_with_evaluate():
    proposal = tifffile.imread(METRICS_REFERENCE_DIR / "d1_prob.tif")
    truth = tifffile.imread(METRICS_REFERENCE_DIR / "d1_gt.tif")
    full = metrics.evaluate(proposal, truth)
    assert metrics.pixel_error(proposal, truth) == full.pixel_error
    assert metrics.rand_error(proposal, truth) == full.rand_error
    assert metrics.warping_error(proposal, truth) == full.warping_error
    assert metrics.vrand_thinned(proposal, truth) == full.vrand_thinned
    assert metrics.vinfo_thinned(proposal, truth) == full.vinfo_thinned
    # (H, W) input is one slice
    assert metrics.pixel_error(proposal[0], truth[0]) == metrics.pixel_error(proposal[:1], truth[:1])


def test_hand_checkable_rand_and_vinfo_on_label_arrays():
    # GT segments [1,1,1,1,2,2,0,0], proposal segments [1,0,2,0,2,2,2,0], 0 = membrane.
    # Within GT cells: n_11 = 1, n_12 = 1, n_22 = 2, two proposal-membrane singletons (N0 = 2).
    # TP = 1 + 1 + 4 + 2 = 8, A = 4^2 + 2^2 = 20, B = 1^2 + 3^2 + 2 = 12, F = 16 / 32 = 0.5.
    gt = np.array([[1, 1, 1, 1, 2, 2, 0, 0]])
    seg = np.array([[1, 0, 2, 0, 2, 2, 2, 0]])
    pairs = metrics._pair_counts(gt, seg)
    assert (pairs.tp, pairs.a, pairs.b) == (8, 20, 12)
    assert 2 * pairs.tp / (pairs.a + pairs.b) == 0.5
    assert metrics._vinfo(pairs) == pytest.approx(0.338757, abs=1e-6)


def test_thresholds_are_accumulated_in_double_like_the_evaluator():
    assert metrics.THRESHOLDS[3] == 0.30000000000000004
    assert metrics.THRESHOLDS[8] == 0.7999999999999999
    assert len(metrics.THRESHOLDS) == 11 and len(metrics.WARPING_THRESHOLDS) == 10


def test_threshold_comparison_is_strict_and_in_float64():
    # float32(0.3) = 0.30000001192... > 0.30000000000000004 in double, but not in float32.
    truth = np.zeros((4, 4), np.uint8)
    truth[:, :2] = 255
    proposal = np.where(truth > 0, np.float32(0.3), np.float32(0.0)).astype(np.float32)
    scores = metrics._pixel_fscores(proposal[None], truth[None] > 0, metrics.THRESHOLDS)
    assert scores[3] == 1.0  # counted as cell at t = 0.30000000000000004
    assert scores[4] < 1.0  # not at t = 0.4
    exact = np.where(truth > 0, 0.5, 0.0).astype(np.float32)
    assert metrics._pixel_fscores(exact[None], truth[None] > 0, [0.5])[0] < 1.0  # strict >


@pytest.fixture(scope="module")
def isbi_labels(isbi_dir):
    return tifffile.imread(isbi_dir / "train-labels.tif")[:2, :160, :160]


def degrade(labels: np.ndarray, seed: int) -> np.ndarray:
    from scipy import ndimage
    rng = np.random.default_rng(seed)
    soft = ndimage.gaussian_filter((labels > 0).astype(np.float32), sigma=(0, 1.5, 1.5))
    return np.clip(soft + rng.normal(0, 0.15, labels.shape), 0, 1).astype(np.float32)


def test_perfect_proposal_scores_zero_errors_and_v_one(isbi_labels):
    result = metrics.evaluate((isbi_labels > 0).astype(np.float32), isbi_labels)
    assert result.pixel_error == 0 and result.rand_error == 0 and result.warping_error == 0
    assert result.vrand_thinned == 1.0 and result.vinfo_thinned == 1.0


def test_rand_f_equals_scikit_image_contingency_table(isbi_labels):
    """Cross-check: singletons for proposal membrane, F = 2 sum n^2 / (sum row^2 + sum col^2)."""
    from scipy import ndimage
    from skimage.metrics import contingency_table
    proposal = degrade(isbi_labels, 0)
    ours = metrics._segmentation_scores(proposal, isbi_labels > 0, metrics.THRESHOLDS,
                                        thinned=False, want_rand=True)[0]
    four = ndimage.generate_binary_structure(2, 1)
    for t, f_ours in zip(metrics.THRESHOLDS, ours):
        tp = a = b = 0
        for gt, p in zip(isbi_labels, proposal):
            g_lab = ndimage.label(gt > 0, four)[0]
            s_lab = ndimage.label(p.astype(np.float64) > t, four)[0]  # float64, as the evaluator
            inside = g_lab > 0
            g, s = g_lab[inside], s_lab[inside].copy()
            zeros = s == 0
            s[zeros] = s.max() + 1 + np.arange(zeros.sum())  # each membrane pixel its own segment
            table = contingency_table(g, s).tocsr()
            tp += table.multiply(table).sum()
            a += np.square(np.asarray(table.sum(axis=1))).sum()
            b += np.square(np.asarray(table.sum(axis=0))).sum()
        assert f_ours == pytest.approx(2 * tp / (a + b), rel=1e-12)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 1000))
def test_rand_statistics_are_invariant_to_relabelling(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 4, size=(12, 12))
    seg = rng.integers(0, 5, size=(12, 12))
    perm_g = np.concatenate([[0], rng.permutation(np.arange(1, 4)) + 10])
    perm_s = np.concatenate([[0], rng.permutation(np.arange(1, 5)) + 7])
    a, b = metrics._pair_counts(gt, seg), metrics._pair_counts(perm_g[gt], perm_s[seg])
    assert (a.tp, a.a, a.b) == (b.tp, b.a, b.b)
    assert a.h_gs == pytest.approx(b.h_gs) and a.h_s == pytest.approx(b.h_s)


def test_ground_truth_encoding_does_not_matter(isbi_labels):
    proposal = degrade(isbi_labels, 1)
    assert (metrics.rand_error(proposal, isbi_labels)
            == metrics.rand_error(proposal, isbi_labels > 0)
            == metrics.rand_error(proposal, (isbi_labels > 0).astype(np.uint16)))


def test_simple_point_table_by_hand():
    code = lambda *names: sum(1 << "N NE E SE S SW W NW".split().index(n) for n in names)  # noqa: E731
    table = metrics.SIMPLE_POINT
    assert not table[code()]  # isolated pixel: deleting it removes an object
    assert not table[code("N", "NE", "E", "SE", "S", "SW", "W", "NW")]  # interior: would make a hole
    assert table[code("N")]  # end of a line
    assert table[code("N", "NE", "E")]  # corner
    assert not table[code("N", "S")]  # bridge: deleting it splits
    assert not table[code("NE")]  # only a diagonal neighbour: not 4-connected to the centre
    assert not table[code("N", "E", "S", "W")]  # cross: four components


def test_warping_counts_a_one_pixel_gap_as_one_merger():
    truth = np.full((7, 9), 255, np.uint8)
    truth[:, 4] = 0
    proposal = (truth > 0).astype(np.float32)
    assert metrics.warping_error(proposal, truth) == 0.0
    proposal[3, 4] = 1.0  # gap in the membrane: the two cells merge
    assert metrics.warping_error(proposal, truth) == pytest.approx(1 / 63)
    proposal = (truth > 0).astype(np.float32)
    proposal[3, 1] = 0.0  # a hole inside a cell: topological, but neither split nor merge
    assert metrics.warping_error(proposal, truth) == 0.0


@pytest.mark.parametrize("proposal, truth, error, match", [
    (np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 5), np.uint8), ValueError, "differs"),
    (np.full((4, 4), 1.5, np.float32), np.zeros((4, 4), np.uint8), ValueError, r"\[0, 1\]"),
    (np.full((4, 4), np.nan, np.float32), np.zeros((4, 4), np.uint8), ValueError, "NaN"),
    (np.zeros((4, 4), np.float32), np.arange(16).reshape(4, 4), ValueError, "binary"),
    (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), TypeError, "255"),
    (np.zeros((4,), np.float32), np.zeros((4,), np.uint8), ValueError, r"\(Z, H, W\)"),
])
def test_bad_inputs_get_clear_errors(proposal, truth, error, match):
    with pytest.raises(error, match=match):
        metrics.evaluate(proposal, truth)


def test_vinfo_special_cases():
    pairs = metrics._Pairs(tp=1, a=1, b=1, h_g=0.0, h_s=0.5, h_gs=0.5)
    assert metrics._vinfo(pairs) == 0.0
    pairs = metrics._Pairs(tp=1, a=1, b=1, h_g=0.5, h_s=0.5, h_gs=1.0)
    assert math.isnan(metrics._vinfo(pairs))
