"""Lenient vendor version parsing, ordering and specifiers."""

from __future__ import annotations

import pytest

from libs.versions import Requirement, SpecifierSet, Version


def v(text: str) -> Version:
    return Version.parse(text)


def test_version_orders_real_vendor_strings():
    texts = ["550.54.14", "12.4", "8.0.RC1", "8.0.0", "24.1.rc2", "23.0.3", "5.0.21.21", "6.0.2", "V100R001C15",
             "24.1", "8.0.RC2", "535.104.05"]
    ordered = sorted(texts, key=Version.parse)
    assert ordered == ["5.0.21.21", "6.0.2", "8.0.RC1", "8.0.RC2", "8.0.0", "12.4", "23.0.3", "24.1.rc2", "24.1",
                       "V100R001C15", "535.104.05", "550.54.14"]


def test_version_rc_sorts_before_final():
    assert v("8.0.RC1") < v("8.0.0") == v("8.0")
    assert v("24.1.rc2") < v("24.1") < v("24.1.0.1")
    assert v("1.0.dev1") < v("1.0a1") < v("1.0b2") < v("1.0rc1") < v("1.0") < v("1.0.post1")
    assert v("8.0.RC1.alpha001") < v("8.0.RC1")


def test_version_trailing_zeros_and_prefixes_are_ignored():
    assert v("12.4") == v("12.4.0") == v("v12.4") == "12.4.0"
    assert v("dtk-24.04.1") == v("24.4.1")
    assert hash(v("12.4")) == hash(v("12.4.0"))


def test_version_huawei_vrc_extracts_numbers():
    assert v("V100R001C15").release == (100, 1, 15)
    assert v("V100R001C15SPC010").release == (100, 1, 15, 10)
    assert v("V100R001C15") < v("V100R001C20") < v("V100R002C10")


def test_version_local_label_kept_but_not_compared():
    t = v("2.4.0+cu121")
    assert t == v("2.4.0") and str(t) == "2.4.0+cu121" and t.local == "cu121"


@pytest.mark.parametrize("bad", ["", "   ", "abc", "rc"])
def test_version_rejects_text_without_numbers(bad):
    with pytest.raises(ValueError, match="invalid version"):
        Version.parse(bad)


def test_version_total_ordering_is_consistent():
    vals = [v(t) for t in ["1", "1.0.1", "1.1rc1", "1.1", "2", "2.0.post1"]]
    for a in vals:
        for b in vals:
            assert (a < b) + (a == b) + (a > b) == 1
            assert (a <= b) == (a < b or a == b)


def test_specifier_set_ranges():
    s = SpecifierSet.parse(">=12.1,<13")
    assert "12.1" in s and "12.9.1" in s and "13.0" not in s and "12.0" not in s
    assert SpecifierSet.parse("!=12.2").contains("12.3") and not SpecifierSet.parse("!=12.2").contains("12.2.0")
    assert SpecifierSet.parse(">12.2").contains("12.2.1") and not SpecifierSet.parse(">12.2").contains("12.2")
    assert SpecifierSet.parse("<=12.2").contains("12.2") and SpecifierSet.parse("==12.4").contains("12.4.0")
    assert SpecifierSet.parse("").contains("0.1")


def test_specifier_wildcard_and_compatible_release():
    s = SpecifierSet.parse("==12.*")
    assert s.contains("12.0") and s.contains("12.9.1") and not s.contains("13.0") and not s.contains("1.2")
    assert not SpecifierSet.parse("!=12.*").contains("12.4")
    assert SpecifierSet.parse("==2.4.*").contains("2.4.1") and not SpecifierSet.parse("==2.4.*").contains("2.40")
    c = SpecifierSet.parse("~=2.4")
    assert c.contains("2.9") and not c.contains("3.0") and not c.contains("2.3")


def test_specifier_includes_vendor_prereleases():
    assert SpecifierSet.parse(">=8.0.RC1").contains("8.0.RC2")
    assert not SpecifierSet.parse(">=8.0").contains("8.0.RC3")


def test_specifier_overlaps():
    assert SpecifierSet.parse(">=12.4,<12.5").overlaps(SpecifierSet.parse(">=12.1"))
    assert not SpecifierSet.parse(">=12.0,<12.1").overlaps(SpecifierSet.parse(">=12.4"))
    assert SpecifierSet.parse("==12.*").overlaps(SpecifierSet.parse(">=12.4,<13"))
    assert not SpecifierSet.parse("<12.4").overlaps(SpecifierSet.parse(">=12.4"))
    assert SpecifierSet.parse("<=12.4").overlaps(SpecifierSet.parse(">=12.4"))
    assert SpecifierSet.parse("").overlaps(SpecifierSet.parse("==1.0"))


@pytest.mark.parametrize(("text", "message"), [
    ("=>12", "expected an operator"),
    (">=", "missing version"),
    (">=12.*", "only allowed with == and !="),
    ("==12.*.1", "'*' may only end"),
    ("~=2", "at least two numbers"),
    (">=12,,<13", "empty clause"),
    (">=abc", "invalid version"),
])
def test_specifier_errors_say_why(text, message):
    with pytest.raises(ValueError, match=message):
        SpecifierSet.parse(text)


def test_requirement_parses_name_and_specifier():
    r = Requirement.parse("cuda>=12.4")
    assert r.name == "cuda" and r.specifier.contains("12.4") and not r.specifier.contains("12.3")
    r = Requirement.parse(" CANN >= 8.0.RC1, <9 ")
    assert r.name == "cann" and str(r) == "cann>=8.0.RC1,<9"
    assert Requirement.parse("rocm").specifier.contains("1.0")


@pytest.mark.parametrize(("text", "message"), [
    ("", "expected 'name'"),
    (">=12.4", "missing runtime name"),
    ("cuda 12.4", "missing operator"),
    ("cuda>=", "missing version"),
    ("cu da>=1", "expected a name"),
])
def test_requirement_errors_say_why(text, message):
    with pytest.raises(ValueError, match=message):
        Requirement.parse(text)
