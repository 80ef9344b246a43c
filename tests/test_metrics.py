"""Metric functions: every number against scikit-learn, the rest against hand-computed values."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from medclassify.evaluation.bootstrap import (bootstrap_ci, bootstrap_indices, patient_groups,
                                              percentile_interval)
from medclassify.evaluation.calibration import expected_calibration_error, reliability_curve
from medclassify.evaluation.metrics import (classification_metrics, confusion_counts, fast_roc_auc, rates_from_confusion,
                                            roc_auc, roc_points, sensitivity_specificity, specificity_per_class)
from medclassify.evaluation.subgroups import subgroup_metrics
from medclassify.evaluation.threshold import apply_threshold, choose_threshold


def _random_predictions(n, n_classes, seed):
    rng = np.random.default_rng(seed)
    y_true = np.arange(n) % n_classes  # every class present
    rng.shuffle(y_true)
    logits = rng.normal(size=(n, n_classes)) + 1.5 * np.eye(n_classes)[y_true]
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, prob


def test_binary_metrics_match_scikit_learn():
    y_true, prob = _random_predictions(80, 2, seed=1)
    y_pred = apply_threshold(prob[:, 1], 0.4)
    m = classification_metrics(y_true, prob, y_pred, ["neg", "pos"])
    assert m["n"] == 80
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y_true, prob[:, 1]))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y_true, prob[:, 1]))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y_true, y_pred))
    assert m["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(y_true, y_pred))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y_true, prob[:, 1]))
    assert m["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    for k, name in enumerate(["neg", "pos"]):
        assert m["per_class"][name]["precision"] == pytest.approx(p[k])
        assert m["per_class"][name]["recall"] == pytest.approx(r[k])
        assert m["per_class"][name]["f1"] == pytest.approx(f[k])
        assert m["per_class"][name]["support"] == s[k]
    for average in ("macro", "weighted"):
        pa, ra, fa, _ = skm.precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        assert m[f"{average}_avg"]["precision"] == pytest.approx(pa)
        assert m[f"{average}_avg"]["recall"] == pytest.approx(ra)
        assert m[f"{average}_avg"]["f1"] == pytest.approx(fa)
    # Sensitivity is the positive class's recall; specificity the negative class's recall.
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y_true, y_pred, pos_label=1))
    assert m["specificity"] == pytest.approx(skm.recall_score(y_true, y_pred, pos_label=0))


def test_positive_class_can_be_the_first_class():
    y_true, prob = _random_predictions(60, 2, seed=2)
    y_pred = apply_threshold(prob[:, 0], 0.5, positive=0, negative=1)
    m = classification_metrics(y_true, prob, y_pred, ["malignant", "benign"], positive=0)
    assert m["positive_class"] == "malignant"
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y_true == 0, prob[:, 0]))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y_true, y_pred, pos_label=0))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y_true == 0, prob[:, 0]))


def test_multiclass_metrics_match_scikit_learn():
    y_true, prob = _random_predictions(90, 3, seed=3)
    y_pred = prob.argmax(axis=1)
    m = classification_metrics(y_true, prob, y_pred, ["a", "b", "c"])
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y_true, prob, multi_class="ovr", average="macro"))
    assert m["auc_method"] == "macro_ovr"
    onehot = np.eye(3)[y_true]
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(onehot, prob, average="macro"))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y_true, prob, labels=[0, 1, 2]))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y_true, y_pred))
    assert m["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y_true, y_pred, average="macro"))
    assert m["positive_class"] is None


def test_a_class_absent_from_the_test_set_has_no_recall_in_any_average():
    # macro_avg.recall counted the absent class as 0 (scikit-learn's default) while sensitivity,
    # its CI and balanced accuracy left it out: one metrics.json gave 0.67 and 1.0 for the same thing.
    y_true = np.array([0, 1, 0, 1])
    prob = np.array([[.5, .3, .2], [.2, .5, .3], [.6, .2, .2], [.1, .8, .1]])
    m = classification_metrics(y_true, prob, prob.argmax(axis=1), ["a", "b", "c"])
    assert m["per_class"]["c"]["recall"] is None and m["per_class"]["c"]["sensitivity"] is None
    assert m["macro_avg"]["recall"] == m["sensitivity"] == m["balanced_accuracy"] == 1.0
    assert m["macro_avg"]["recall"] == skm.recall_score(y_true, prob.argmax(axis=1), labels=[0, 1, 2], average="macro",
                                                        zero_division=np.nan)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=40))
def test_accuracy_and_confusion_matrix_match_scikit_learn_on_any_input(pairs):
    y_true = np.array([t for t, _ in pairs])
    y_pred = np.array([p for _, p in pairs])
    prob = np.full((len(pairs), 3), 1 / 3)
    m = classification_metrics(y_true, prob, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=[0, 1, 2]).tolist()
    if len(set(y_true)) > 1 and len(set(y_pred)) > 1:
        assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y_true, y_pred))
    else:
        assert m["mcc"] is None  # 0/0; scikit-learn says 0


def test_auc_is_null_when_the_test_set_holds_one_class():
    y_true = np.zeros(5, dtype=int)
    prob = np.tile([0.7, 0.3], (5, 1))
    m = classification_metrics(y_true, prob, np.zeros(5, dtype=int), ["neg", "pos"])
    assert m["auc"] is None
    assert m["sensitivity"] is None  # no positives: undefined, not 0
    assert m["specificity"] == 1.0
    assert m["mcc"] is None  # no correlation with a constant truth; scikit-learn says 0


def test_precision_of_a_class_never_predicted_is_null_and_left_out_of_the_averages():
    # Every image called "c": a and b are never predicted, so their precision is 0/0. Counted as 0
    # (scikit-learn's default) they pulled macro precision down to 1/9.
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.full(6, 2)
    prob = np.tile([0.2, 0.2, 0.6], (6, 1))
    m = classification_metrics(y_true, prob, y_pred, ["a", "b", "c"])
    assert m["per_class"]["a"]["precision"] is None and m["per_class"]["b"]["precision"] is None
    assert m["per_class"]["c"]["precision"] == pytest.approx(1 / 3)
    assert m["per_class"]["a"]["f1"] == 0.0  # 2TP / (2TP + FP + FN) = 0 / 2: defined
    assert m["macro_avg"]["precision"] == pytest.approx(1 / 3) == m["weighted_avg"]["precision"]
    assert m["macro_avg"]["f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=np.nan))


def test_specificity_by_hand():
    # true:  0 0 0 1 1 2 ; pred: 0 1 0 1 2 2
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 0, 1, 2, 2])
    # class 0: negatives {3,4,5} all predicted non-0 → 3/3
    # class 1: negatives {0,1,2,5}; sample 1 predicted 1 → 3/4
    # class 2: negatives {0,1,2,3,4}; sample 4 predicted 2 → 4/5
    assert specificity_per_class(y_true, y_pred, 3) == pytest.approx([1.0, 0.75, 0.8])


def test_ece_and_reliability_curve_by_hand():
    outcome = np.array([0, 1, 1, 0, 1])
    prob = np.array([0.1, 0.15, 0.8, 0.9, 1.0])
    # 2 bins: [0, .5): probs .1, .15 mean .125, observed .5 ; [.5, 1]: .8 .9 1.0 mean .9, observed 2/3
    curve = reliability_curve(outcome, prob, n_bins=2)
    assert curve["count"].tolist() == [2, 3]
    assert curve["mean_predicted"] == pytest.approx([0.125, 0.9])
    assert curve["observed"] == pytest.approx([0.5, 2 / 3])
    expected = (2 / 5) * abs(0.5 - 0.125) + (3 / 5) * abs(2 / 3 - 0.9)
    assert expected_calibration_error(outcome, prob, n_bins=2) == pytest.approx(expected)


def test_ece_is_zero_for_perfectly_calibrated_bins_and_one_is_counted():
    outcome = np.array([1, 1, 0, 0])
    prob = np.array([1.0, 1.0, 0.0, 0.0])
    assert expected_calibration_error(outcome, prob, n_bins=10) == pytest.approx(0.0)
    assert reliability_curve(outcome, prob, 10)["count"][-1] == 2


@pytest.mark.parametrize("n_bins", [5, 10, 20, 50, 100])
def test_a_probability_on_a_bin_edge_falls_in_the_bin_that_edge_opens(n_bins):
    # The edges as a user writes them: 0.3, not linspace's 0.30000000000000004, which put 0.3 in
    # [0.2, 0.3) (helper-57). int(0.58 * 50) is 28 and int(0.29 * 100) is 28: those landed one bin low.
    edges = np.array([float(Fraction(k, n_bins)) for k in range(n_bins + 1)])
    curve = reliability_curve(np.zeros(n_bins + 1), edges, n_bins)
    assert curve["edges"].tolist() == edges.tolist()
    assert curve["count"].tolist() == [1] * (n_bins - 1) + [2]  # the last bin also holds 1.0
    assert reliability_curve(np.zeros(1), np.array([float(f"{3 / 10}")]), 10)["count"][3] == 1


def test_mcc_is_undefined_when_the_predictions_hold_one_class():
    # 0/0: scikit-learn's 0 reads as "no better than chance" (helper-57).
    y_true = np.repeat([0, 1], [70, 30])
    constant = classification_metrics(y_true, np.full((100, 2), 0.5), np.ones(100, int), ["neg", "pos"], positive=1)
    assert constant["mcc"] is None
    varied = classification_metrics(y_true, np.full((100, 2), 0.5), y_true[::-1].copy(), ["neg", "pos"], positive=1)
    assert varied["mcc"] == pytest.approx(skm.matthews_corrcoef(y_true, y_true[::-1]))


def test_binary_ece_uses_positive_probability_and_multiclass_the_top_label():
    y_true = np.array([0, 1, 1, 0])
    prob = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.9, 0.1]])
    m = classification_metrics(y_true, prob, prob.argmax(1), ["n", "p"], calibration_bins=10)
    assert m["ece"] == pytest.approx(expected_calibration_error(y_true, prob[:, 1], 10))
    prob3 = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.25, 0.25]])
    y3 = np.array([0, 1, 2])
    m3 = classification_metrics(y3, prob3, prob3.argmax(1), ["a", "b", "c"], calibration_bins=10)
    assert m3["ece"] == pytest.approx(expected_calibration_error([1, 1, 0], [0.6, 0.7, 0.5], 10))


# --- threshold -------------------------------------------------------------------------------
def test_youden_threshold_maximises_sensitivity_plus_specificity():
    is_pos = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    score = np.array([0.1, 0.2, 0.35, 0.6, 0.4, 0.55, 0.7, 0.9])
    threshold, note = choose_threshold(is_pos, score, "youden")
    assert note is None
    predicted = score >= threshold
    best = max((np.mean(score[is_pos] >= t) + np.mean(score[~is_pos] < t) - 1) for t in score)
    assert np.mean(predicted[is_pos]) + np.mean(~predicted[~is_pos]) - 1 == pytest.approx(best)
    assert threshold == pytest.approx(0.4)


def test_youden_threshold_is_the_highest_of_exactly_tied_ones():
    # J = 1/3 at 0.9 (1/3 - 0/3), 0.7 (2/3 - 1/3) and 0.5 (3/3 - 2/3); in floating point the
    # last two are larger than the first, and argmax took 0.5.
    is_pos = np.array([1, 0, 1, 0, 1, 0], dtype=bool)
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert choose_threshold(is_pos, score, "youden") == (0.9, None)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=2, max_size=30))
def test_youden_threshold_matches_exact_fractions(rows):
    is_pos = np.array([r[0] for r in rows])
    score = np.array([r[1] / 6 for r in rows])  # a coarse grid, so that scores and J values tie
    if is_pos.all() or not is_pos.any():
        return
    youden = {t: Fraction(int((score[is_pos] >= t).sum()), int(is_pos.sum()))
              - Fraction(int((score[~is_pos] >= t).sum()), int((~is_pos).sum())) for t in set(score)}
    best = max(youden.values())
    assert choose_threshold(is_pos, score, "youden")[0] == max(t for t, j in youden.items() if j == best)

def test_target_sensitivity_threshold_reaches_the_target_with_the_highest_threshold():
    is_pos = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    score = np.array([0.95, 0.9, 0.8, 0.5, 0.2, 0.85, 0.4, 0.3, 0.1, 0.05])
    threshold, _ = choose_threshold(is_pos, score, "target_sensitivity", target_sensitivity=0.8)
    assert threshold == pytest.approx(0.5)  # 4/5 positives at >= 0.5; 0.8 gives only 3/5
    assert np.mean(score[is_pos] >= threshold) >= 0.8


def test_fixed_threshold_and_single_class_fallback():
    assert choose_threshold([True, False], [0.2, 0.3], "fixed", fixed=0.3) == (0.3, None)
    threshold, note = choose_threshold([False, False], [0.2, 0.3], "youden", fixed=0.5)
    assert threshold == 0.5 and "single class" in note
    with pytest.raises(ValueError):
        choose_threshold([True, False], [0.2, 0.3], "best")


def test_apply_threshold_counts_equal_scores_as_positive():
    assert apply_threshold([0.2, 0.5, 0.7], 0.5).tolist() == [0, 1, 1]


# --- bootstrap -------------------------------------------------------------------------------
def test_patient_groups_keep_appearance_order():
    groups = patient_groups(["b", "a", "b", "c", "a"])
    assert [g.tolist() for g in groups] == [[0, 2], [1, 4], [3]]


def test_bootstrap_resamples_are_the_drawn_patients_images_in_order():
    # Written as a per-patient scan and a per-draw concatenation, which took 20 s for 300,000
    # test images of one patient each (helper-83); the resamples must not change.
    rng = np.random.default_rng(3)
    patients = rng.integers(0, 400, 2000).astype(str)
    groups = [np.flatnonzero(patients == p) for p in dict.fromkeys(patients)]
    assert [g.tolist() for g in patient_groups(patients)] == [g.tolist() for g in groups]
    draws = np.random.default_rng(11)
    for indices in bootstrap_indices(patients, 5, seed=11):
        drawn = draws.integers(0, len(groups), size=len(groups))
        np.testing.assert_array_equal(indices, np.concatenate([groups[g] for g in drawn]))


def test_bootstrap_resamples_whole_patients_and_is_seeded():
    patients = np.repeat([f"p{i}" for i in range(10)], [1, 2, 3, 4, 5, 1, 2, 3, 4, 5])
    first = list(bootstrap_indices(patients, 20, seed=7))
    again = list(bootstrap_indices(patients, 20, seed=7))
    other = list(bootstrap_indices(patients, 20, seed=8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    for indices in first:
        drawn = patients[indices]
        # every drawn patient contributes all of its images, as often as it was drawn
        for patient in set(drawn):
            assert (drawn == patient).sum() % (patients == patient).sum() == 0


def test_patient_bootstrap_is_wider_than_image_bootstrap_when_images_are_correlated():
    # 20 patients x 10 images; each patient's images are all right or all wrong: the effective
    # sample size is 20, not 200, and only a patient-level resample sees that.
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(20), 10)
    correct_patient = rng.random(20) < 0.7
    correct = correct_patient[patients].astype(float)
    statistic = {"accuracy": lambda idx: correct[idx].mean()}
    patient_ci, _ = bootstrap_ci(patients, statistic, n_resamples=500, seed=0)
    image_ci, _ = bootstrap_ci(np.arange(200), statistic, n_resamples=500, seed=0)
    patient_width = patient_ci["accuracy"][1] - patient_ci["accuracy"][0]
    image_width = image_ci["accuracy"][1] - image_ci["accuracy"][0]
    assert patient_width > 2 * image_width


def test_bootstrap_ci_contains_the_point_estimate():
    y_true, prob = _random_predictions(120, 2, seed=5)
    patients = np.repeat(np.arange(40), 3)
    statistics = {"auc": lambda idx: skm.roc_auc_score(y_true[idx], prob[idx, 1]),
                  "accuracy": lambda idx: np.mean(y_true[idx] == prob[idx].argmax(1))}
    intervals, n_valid = bootstrap_ci(patients, statistics, n_resamples=300, seed=1, confidence=0.95)
    assert intervals["auc"][0] <= skm.roc_auc_score(y_true, prob[:, 1]) <= intervals["auc"][1]
    assert intervals["accuracy"][0] <= np.mean(y_true == prob.argmax(1)) <= intervals["accuracy"][1]
    assert n_valid == {"auc": 300, "accuracy": 300}
    narrow, _ = bootstrap_ci(patients, statistics, n_resamples=300, seed=1, confidence=0.5)
    assert narrow["auc"][1] - narrow["auc"][0] < intervals["auc"][1] - intervals["auc"][0]


def test_percentile_interval_ignores_undefined_resamples():
    assert percentile_interval([np.nan, 1.0, 2.0, 3.0], 0.5) == pytest.approx([1.5, 2.5])
    assert percentile_interval([np.nan, np.nan]) == [None, None]


# --- subgroups -------------------------------------------------------------------------------
def test_subgroup_metrics_count_and_flag_small_groups():
    y_true, prob = _random_predictions(60, 2, seed=9)
    y_pred = prob.argmax(1)
    sites = np.array(["A"] * 40 + ["B"] * 15 + [""] * 5, dtype=object)
    patients = np.arange(60) // 2
    result = subgroup_metrics(sites, y_true, prob, y_pred, patients, ["n", "p"], min_size=30)
    assert set(result) == {"A", "B", "(missing)"}
    assert result["A"]["n"] == 40 and result["A"]["n_patients"] == 20
    assert result["A"]["reliable"] and not result["B"]["reliable"]
    mask = sites == "A"
    assert result["A"]["accuracy"] == pytest.approx(skm.accuracy_score(y_true[mask], y_pred[mask]))
    assert result["A"]["auc"] == pytest.approx(skm.roc_auc_score(y_true[mask], prob[mask, 1]))
    assert sum(g["n"] for g in result.values()) == 60


# --- fast forms used by the bootstrap ---------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 4), st.integers(0, 2)), min_size=3, max_size=60))
def test_fast_forms_equal_scikit_learn(rows):
    y_true = np.array([r[0] for r in rows])
    # scores on a coarse grid so that ties occur
    raw = np.array([[r[1], 4 - r[1], 2] for r in rows], dtype=float) + 0.1
    prob = raw / raw.sum(axis=1, keepdims=True)
    y_pred = np.array([r[2] for r in rows])
    for n_classes, labels in ((2, np.minimum(y_true, 1)), (3, y_true)):
        p = prob[:, :2] / prob[:, :2].sum(axis=1, keepdims=True) if n_classes == 2 else prob
        pred = np.minimum(y_pred, n_classes - 1)
        assert fast_roc_auc(labels, p, n_classes) == pytest.approx(roc_auc(labels, p, n_classes), nan_ok=True)
        cm = confusion_counts(labels, pred, n_classes)
        assert cm.tolist() == skm.confusion_matrix(labels, pred, labels=list(range(n_classes))).tolist()
        accuracy, sens, spec = rates_from_confusion(cm)
        assert accuracy == pytest.approx(skm.accuracy_score(labels, pred))
        assert (sens, spec) == pytest.approx(sensitivity_specificity(labels, pred, n_classes), nan_ok=True)
    is_pos = y_true == 1
    if 0 < is_pos.sum() < len(is_pos):
        fpr, tpr = roc_points(is_pos, prob[:, 1])
        sk_fpr, sk_tpr, _ = skm.roc_curve(is_pos, prob[:, 1], drop_intermediate=False)
        assert fpr == pytest.approx(sk_fpr) and tpr == pytest.approx(sk_tpr)


def _float32_softmax(n, n_classes, scale, seed):
    # A Keras model's output: float32 softmax of confident logits, so that many scores saturate
    # to exactly tied values (1.0, or the same tiny number) and rows sum to 1 only within float32.
    rng = np.random.default_rng(seed)
    y_true = np.arange(n) % n_classes
    logits = ((rng.normal(size=(n, n_classes)) + 2.0 * np.eye(n_classes)[y_true]) * scale).astype(np.float32)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return y_true, (e / e.sum(axis=1, keepdims=True)).astype(float)


def test_multiclass_auc_keeps_tied_scores_tied_as_scikit_learn_does():
    y_true, prob = _float32_softmax(300, 3, scale=15, seed=0)
    assert any(len(np.unique(prob[:, c])) < len(prob) for c in range(3))  # the case under test
    expected = skm.roc_auc_score(y_true, prob, multi_class="ovr", average="macro")
    assert roc_auc(y_true, prob, 3) == pytest.approx(expected, rel=1e-12)
    assert fast_roc_auc(y_true, prob, 3) == pytest.approx(expected, rel=1e-12)
    # Rows summing to 1 in float64, where dividing by the sum made 0.2 and 0.2000...04 of column 0.
    prob = np.array([[.1, .2, .7], [.1, .7, .2], [.2, .1, .7], [.2, .7, .1], [.7, .2, .1], [.7, .1, .2]])
    y_true = np.array([0, 1, 2, 0, 1, 2])
    expected = skm.roc_auc_score(y_true, prob, multi_class="ovr")  # 7/12
    assert roc_auc(y_true, prob, 3) == pytest.approx(expected, rel=1e-12)
    assert fast_roc_auc(y_true, prob, 3) == pytest.approx(expected, rel=1e-12)

def test_average_specificity_by_hand():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 0, 1, 2, 2])
    m = classification_metrics(y_true, np.full((6, 3), 1 / 3), y_pred, ["a", "b", "c"])
    # per class 1, 3/4, 4/5 (see test_specificity_by_hand); supports 3, 2, 1
    assert m["macro_avg"]["specificity"] == pytest.approx((1 + 0.75 + 0.8) / 3)
    assert m["weighted_avg"]["specificity"] == pytest.approx((3 * 1 + 2 * 0.75 + 1 * 0.8) / 6)
    assert [m["per_class"][c]["specificity"] for c in "abc"] == pytest.approx([1, 0.75, 0.8])


def test_subgroup_intervals_resample_patients_within_the_group():
    y_true, prob = _random_predictions(80, 2, seed=11)
    y_pred = prob.argmax(1)
    sites = np.array(["A"] * 50 + ["B"] * 30, dtype=object)
    patients = np.arange(80) // 2
    result = subgroup_metrics(sites, y_true, prob, y_pred, patients, ["n", "p"], n_resamples=200, seed=3)
    for group in result.values():
        low, high = group["ci"]["auc"]
        assert low <= group["auc"] <= high
        assert group["ci"]["accuracy"][0] <= group["accuracy"] <= group["ci"]["accuracy"][1]
    assert all(group["ci_n_valid"]["accuracy"] == 200 for group in result.values())
    again = subgroup_metrics(sites, y_true, prob, y_pred, patients, ["n", "p"], n_resamples=200, seed=3)
    assert again == result
    assert "ci" not in subgroup_metrics(sites, y_true, prob, y_pred, patients, ["n", "p"])["A"]


def test_a_subgroup_whose_classes_each_come_from_one_patient_is_not_reliable():
    # The demo's MR test patients: AUC 0.62 with the interval [0.62, 0.62], marked reliable.
    y_true = np.array([0] * 10 + [1] * 10 + [0] * 10 + [1] * 10)
    prob = np.column_stack([1 - np.linspace(0.1, 0.9, 40), np.linspace(0.1, 0.9, 40)])
    y_pred = prob.argmax(1)
    patients = np.array([0] * 10 + [1] * 10 + [2] * 10 + [3] * 10)
    sites = np.array(["one_patient_a_class"] * 20 + ["two_patients_a_class"] * 20, dtype=object)
    patients[20:25], patients[30:35] = 4, 5  # the second site: each class from two patients
    result = subgroup_metrics(sites, y_true, prob, y_pred, patients, ["n", "p"], min_size=10, n_resamples=200)
    single, double = result["one_patient_a_class"], result["two_patients_a_class"]
    assert single["class_patients"] == {"n": 1, "p": 1} and not single["reliable"]
    assert single["ci"]["auc"][0] == single["ci"]["auc"][1] and single["ci_n_valid"]["auc"] < 200
    assert double["class_patients"] == {"n": 2, "p": 2} and double["reliable"]
