"""AnchorParams validation and regions."""
import pytest

from anchor.params import AnchorParams


def test_defaults_follow_block_times_step():
    p = AnchorParams(theta=12.0, step=16, block_size=128, init_size=None, local_size=None)
    assert (p.group, p.init, p.local) == (2048, 2048, 2048)
    assert p.local_start(3) == 3 * 2048                    # the group's own aligned chunk
    assert p.candidate_range(0) == (2048, 2048)            # empty
    assert p.candidate_range(1) == (2048, 2048)            # group 1 is exact
    assert p.candidate_range(5) == (2048, 5 * 2048)
    assert p.scale(128) == pytest.approx(128 ** -0.5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(block_size=100), "block_size"), (dict(step=0), "step"), (dict(init_size=100), "init_size"),
    (dict(local_size=1024), "local_size"), (dict(theta=float("nan")), "theta")])
def test_invalid_params_raise(kwargs, match):
    base = dict(theta=12.0, step=16, block_size=128, init_size=None, local_size=None)
    with pytest.raises(ValueError, match=match):
        AnchorParams(**{**base, **kwargs})
