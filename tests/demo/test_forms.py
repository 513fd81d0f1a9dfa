"""The demo's DDA forms: contrastive references, the debias statistic's verdicts and their
count over seeds (on hand-made inputs; the full runs are `fasttda demo`)."""
from __future__ import annotations

import pytest

from fasttda.data import Example
from fasttda.demo import forms, seeds
from fasttda.demo.evaluate import Query


class _Corpus:
    pairs = [("Wales", "Scotland"), ("Oman", "Peru")]


def test_contrast_reference_puts_the_true_entity_back():
    qs = [Query(Example("a", "doc summary :", "in Scotland , Scotlands fans ."), 0, True),
          Query(Example("b", "doc summary :", "Peru wins .", target="Peru"), 1, False)]
    span, whole = forms.contrast_examples(qs, _Corpus(), span=True), forms.contrast_examples(qs, _Corpus(), span=False)
    assert span[0].reference == "in Wales , Scotlands fans ."  # whole words only
    assert (span[1].reference, span[1].reference_target, span[1].target) == ("Oman wins .", "Oman", "Peru")
    assert whole[1].reference_target is None
    assert forms.pair_groups(qs + [Query(Example("c", "p", "r"), 0, True)]) == [[0, 2], [1]]


def _stats(lift, spear_top, spear_all, overlap):
    return {"top_lift": lift, "agreement_top": spear_top, "agreement_all": spear_all, "top_overlap": overlap,
            "top_rows": 10, "n": 200}


@pytest.mark.parametrize("lift, dda_auc, right", [(0.4, 0.6, True), (0.4, 0.8, False), (-0.1, 0.8, True),
                                                  (-0.1, 0.6, False), (0.0, 0.7, False)])
def test_judge_the_prediction_against_the_labelled_outcome(lift, dda_auc, right):
    # a tie (dda = denoise) counts as "debias did not help"
    methods = {"denoise": {"auc": 0.7}, "dda": {"auc": dda_auc}}
    d = forms.judge(_stats(lift, -0.5, 0.5, 0.15), methods, "cosine")
    assert d["correct"] is right and d["predicts"] == ("harm" if lift > 0 else "help")
    assert d["correct_agreement_all"] is (dda_auc <= 0.7)  # +0.5 > 0 predicts harm
    assert d["correct_agreement_top"] is (dda_auc > 0.7)  # −0.5 predicts help
    assert d["correct_top_overlap"] is (dda_auc <= 0.7)  # 0.15 > 2·10/200: above chance, predicts harm


def test_statistic_counted_over_seeds():
    reports = []
    for seed, (lift, dda_auc) in enumerate([(0.3, 0.6), (0.2, 0.9), (-0.2, 0.9)]):
        methods = {"denoise": {"auc": 0.7}, "dda": {"auc": dda_auc}}
        reports.append({"config": {"seed": seed}, "methods": methods,
                        "debias_diagnosis": {"cosine": forms.judge(_stats(lift, 0.1, 0.1, 0.0), methods, "cosine")}})
    stat = seeds.debias_statistic(reports)
    assert stat["runs"] == 3 and stat["correct"]["top_lift"] == 2 and stat["correct"]["agreement_top"] == 1
    assert [d["seed"] for d in stat["forms"]["cosine"]] == [0, 1, 2]
