"""``resolve_loss`` answers what a loss needs (options, fields, CRB policy, shardability, how to
build it) in one call; a head that overrides ``forward`` without its own hooks is not sharded."""

from __future__ import annotations

import pytest
import torch

from lrfr_cli.errors import LrfrError
from lrfr_cli.losses import ArcFaceHead, build_head
from lrfr_cli.losses.recipe import LossChoice, resolve_loss
from lrfr_cli.losses.sharded import ShardedClassifier, margin_plan


def test_a_loss_choice_says_what_the_loss_needs():
    c = resolve_loss("ApProach2", ["m_max=0.45"], scale=30.0, quality="MEAN_ABS")
    assert c == LossChoice("approach2", {"m_max": 0.45, "s": 30.0, "quality": "mean-abs"}, "default", ("images",), "full", 1.0)
    assert c.crb_enabled(None) and not c.crb_enabled(False) and c.crb_reason(None) == "default for approach2"
    assert resolve_loss("approach2", ["quality=Mean_Abs"]).head_kw == {"quality": "mean-abs"}
    a1 = resolve_loss("approach1")
    assert (a1.crb_policy, a1.needs, a1.crb_enabled(None), a1.crb_reason(True)) == ("required", ("is_lr",), True, "required by approach1 (its margin depends on the HR/LR flag)")
    with pytest.raises(LrfrError, match="--loss approach1 needs cross-resolution batches"):
        a1.crb_enabled(False)
    assert resolve_loss("adaface").crb_reason(True) == "--crb"


def test_build_is_plain_or_sharded_and_equals_build_head():
    torch.manual_seed(0)
    plain = resolve_loss("cosface", margin=0.2).build(8, 5)
    torch.manual_seed(0)
    assert torch.equal(plain.weight, build_head("cosface", 8, 5, m=0.2).weight) and plain.m == 0.2
    sharded = resolve_loss("arcface", classifier="Sharded", sample_rate=0.5).build(8, 5, seed=3)
    assert isinstance(sharded, ShardedClassifier) and (sharded.sample_rate, sharded.seed) == (0.5, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "tripletface"}, "unknown loss 'tripletface'; choose one of: softmax, cosface"),
        ({"classifier": "bogus"}, "unknown --classifier 'bogus'; choose one of: full, sharded"),
        ({"sample_rate": 0.5}, "--sample-rate needs --classifier sharded"),
        ({"name": "softmax", "margin": 0.3}, "--margin: loss softmax has no option 'm' (its options: none)"),
        ({"name": "arcface", "quality": "mean-abs"}, "--quality: loss arcface has no option 'quality' (its options: s, m)"),
        ({"name": "approach2", "quality": "sharpness"}, "--quality: unknown quality mode 'sharpness': choose one of variance, mean-abs"),
        ({"name": "approach2", "items": ["quality=sharpness"]}, "unknown quality mode 'sharpness'"),
        ({"items": ["x=1"]}, "--loss-opt x=1: loss arcface has no option 'x' (its options: s=64, m=0.5)"),
        ({"items": ["m=big"]}, "--loss-opt m=big: arcface's m takes a float value (default 0.5)"),
    ],
)
def test_bad_choices_are_the_commands_one_line_errors(kwargs, message):
    kwargs = {"name": "arcface", **kwargs}
    with pytest.raises(LrfrError) as e:
        resolve_loss(kwargs.pop("name"), kwargs.pop("items", ()), **kwargs)
    assert str(e.value).startswith(message)


def test_check_fails_before_any_work():
    with pytest.raises(LrfrError, match="cannot use --classifier sharded"):
        resolve_loss("softmax", classifier="sharded").check(8, 10**9)  # a 2-class probe: no 10⁹-row matrix
    with pytest.raises(LrfrError, match="must be in"):
        resolve_loss("arcface", classifier="sharded", sample_rate=1.5).check(8, 10)
    with pytest.raises(LrfrError, match="--margin does not apply to approach1"):
        resolve_loss("approach1", margin=0.3).check(8, 10)
    with pytest.raises(LrfrError, match="at least 2 identities"):
        resolve_loss("arcface").check(8, 1)
    resolve_loss("adaface", classifier="sharded").check(8, 10)


def test_a_head_that_overrides_forward_without_its_own_hooks_is_not_sharded():
    class Odd(ArcFaceHead):
        def forward(self, embeddings, labels, margin=None, **fields):
            return super().forward(embeddings, labels, margin, **fields) * 2

    class OddWithHooks(Odd):
        def margin_terms(self, embeddings, labels, margin, **fields):
            return super().margin_terms(embeddings, labels, margin, **fields)

    with pytest.raises(LrfrError, match="overrides forward without the margin_terms/target_from_terms hook"):
        ShardedClassifier(Odd(4, 6), 6)
    with pytest.raises(LrfrError, match="cannot use --classifier sharded"):
        margin_plan(OddWithHooks(4, 6))  # target_from_terms is still the base's
    plan = margin_plan(ArcFaceHead(4, 6))
    assert plan.terms.__func__ is ArcFaceHead.margin_terms and plan.target.__func__ is ArcFaceHead.target_from_terms
