"""AnchorParams validation and regions."""
import math

import pytest

from anchor.params import AnchorParams

BASE = dict(theta=12.0, step=16, block_size=128, init_size=None, local_size=None, tail="dense", tail_block_size=16)


def test_defaults_follow_block_times_step():
    p = AnchorParams(**BASE)
    assert (p.group, p.init, p.local) == (2048, 2048, 2048)
    assert p.local_start(3) == 3 * 2048                    # the group's own aligned chunk
    assert p.candidate_range(0) == (2048, 2048)            # empty
    assert p.candidate_range(1) == (2048, 2048)            # group 1 is exact
    assert p.candidate_range(5) == (2048, 5 * 2048)
    assert p.scale(128) == pytest.approx(128 ** -0.5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(block_size=100), "block_size"), (dict(step=0), "step"), (dict(init_size=100), "init_size"),
    (dict(local_size=1024), "local_size"), (dict(theta=float("nan")), "theta"),
    (dict(tail="tail"), "tail"), (dict(tail_block_size=8), "tail_block_size"),
    (dict(tail_block_size=48), "tail_block_size"), (dict(sm_scale=-1.0), "sm_scale")])
def test_invalid_params_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AnchorParams(**{**BASE, **kwargs})


@pytest.mark.parametrize("key,value", [
    ("step", 2.5), ("step", 16.0), ("step", True), ("block_size", 16.0), ("block_size", "128"),
    ("theta", True), ("theta", "12"), ("theta", None), ("init_size", 2048.0), ("local_size", False),
    ("tail", None), ("tail_block_size", 16.0), ("sm_scale", True)])
def test_wrong_types_name_the_key(key, value):
    """A wrong type is reported under its own key (not a later derived one)."""
    with pytest.raises(ValueError, match=rf"^{key} must be"):
        AnchorParams(**{**BASE, key: value})


def test_theta_accepts_ints_and_infinities_as_floats():
    assert AnchorParams(**{**BASE, "theta": 12}).theta == 12.0
    assert isinstance(AnchorParams(**{**BASE, "theta": 12}).theta, float)
    assert AnchorParams(**{**BASE, "theta": -math.inf}).theta == -math.inf


@pytest.mark.parametrize("tail,n,prefix", [("dense", 5000, 4096), ("query_aware", 4096, 4096),
                                           ("sparse", 5000, 5000), ("dense", 2047, 0)])
def test_prefix_len_follows_the_tail_rule(tail, n, prefix):
    assert AnchorParams(**{**BASE, "tail": tail}).prefix_len(n) == prefix


@pytest.mark.parametrize("tail,n,has", [
    ("dense", 4096, False), ("dense", 6143, False), ("dense", 6144, True),   # groups 0, 1 have none
    ("sparse", 4096, False), ("sparse", 4097, True),                         # partial group 2 has some
    ("query_aware", 4096, False), ("query_aware", 4097, True), ("query_aware", 100, False)])
def test_has_candidates(tail, n, has):
    assert AnchorParams(**{**BASE, "tail": tail}).has_candidates(n) is has
