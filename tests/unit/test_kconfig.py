import pytest

from hmmsim.kconfig import (
    HPAGE_PMD_NR,
    KERNEL_COMMIT,
    PAGE_SIZE,
    ConfigError,
    KConfig,
)


def test_pin_is_a_full_commit():
    assert len(KERNEL_COMMIT) == 40 and KERNEL_COMMIT.startswith("0eaed89c18ae")


def test_geometry_is_x86_64():
    assert PAGE_SIZE == 4096
    assert HPAGE_PMD_NR == 512


def test_default_has_only_merged_series_d():
    assert KConfig().features == frozenset({"d"})


def test_c_requires_a_and_b():
    with pytest.raises(ConfigError, match=r"series \(c\) needs series \(a\), \(b\)"):
        KConfig(features=frozenset({"c"}))
    assert KConfig(features=frozenset({"a", "b", "c"})).has("c")


def test_c_and_e_conflict_names_the_bit_and_both_series():
    with pytest.raises(ConfigError) as e:
        KConfig(features=frozenset({"a", "b", "c", "e"}))
    msg = str(e.value)
    assert "(c)" in msg and "(e)" in msg and "bit 57" in msg
    cfg = KConfig(features=frozenset({"a", "b", "c", "e"}), conflict_resolution="c-first")
    assert cfg.has("e")


def test_c_and_e_conflict_bit_follows_bits_per_long():
    with pytest.raises(ConfigError, match="bit 25"):
        KConfig(features=frozenset({"a", "b", "c", "e"}), bits_per_long=32)


@pytest.mark.parametrize(
    "kw",
    [
        {"features": frozenset({"z"})},
        {"bits_per_long": 48},
        {"ram_bytes": 4096},
        {"ram_bytes": (32 << 20) + 4096},
        {"hugetlb_pages": -1},
    ],
)
def test_bad_configs_are_rejected(kw):
    with pytest.raises(ConfigError):
        KConfig(**kw)
