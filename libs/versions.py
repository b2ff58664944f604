"""Lenient parsing and comparison of vendor version strings.

Accelerator stacks do not follow PEP 440: NVIDIA drivers are ``550.54.14``, CANN is
``8.0.RC1``, DTK is ``24.04.1``, Huawei firmware is ``V100R001C15``. This module
orders all of them with one rule set:

* The *release* is the run of leading numbers (``550.54.14`` → ``(550, 54, 14)``).
  Trailing zeros do not matter: ``12.4 == 12.4.0``.
* A leading word is dropped (``v12.4``, ``dtk-24.04``). Huawei ``VxxxRxxxCxx[SPCxxx]``
  strings become their numbers in order (``V100R001C15`` → ``100.1.15``).
* Pre-release words after the release: ``a``/``alpha`` < ``b``/``beta`` < ``rc``/``c``/``pre``
  < final. So ``8.0.RC1 < 8.0.RC2 < 8.0.0`` and ``24.1.rc2 < 24.1``.
  A second pre-release word (``8.0.RC1.alpha001``) marks a build *before* that pre-release.
* ``dev`` sorts before everything of the same release; ``post``/``patch``/``spc``/``hotfix``
  after the final release.
* Anything after ``+`` and any unknown word (with what follows it) is a *local* label: it is
  kept in ``str()`` but ignored for ordering and equality (``2.4.0+cu121 == 2.4.0``).

Specifiers (``>=12.1,<13``) compare with this ordering as is: unlike PEP 440, pre-releases
are *not* excluded from ranges, because vendors ship RC builds as production runtimes
(``cann>=8.0`` does not match ``8.0.RC1``, but ``cann>=8.0.RC1`` does).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, cast

__all__ = ["Requirement", "Specifier", "SpecifierSet", "Version"]

_INF = 1 << 62
_PRE_RANK = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}
_POST_WORDS = {"post", "patch", "p", "spc", "hotfix", "hf", "rev"}
_HUAWEI = re.compile(r"^v(\d+)r(\d+)(?:c(\d+))?(?:spc(\d+))?(?:b(\d+))?$")
_TOKEN = re.compile(r"\d+|[a-z]+")

Key = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def _trim(release: tuple[int, ...]) -> tuple[int, ...]:
    end = len(release)
    while end > 1 and release[end - 1] == 0:
        end -= 1
    return release[:end]


@dataclass(frozen=True, eq=False)
class Version:
    """A parsed version. Compare with ``<``, ``==`` …; ``str()`` gives the original text."""

    raw: str
    release: tuple[int, ...]
    pre: tuple[int, ...] | None = None  # (rank, number, extra numbers…); rank 0 alpha, 1 beta, 2 rc
    post: tuple[int, ...] | None = None
    dev: int | None = None
    local: str = ""
    _key: Key = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pre is not None:
            pre_key = self.pre
        elif self.dev is not None and self.post is None:
            pre_key = (-1,)  # 1.0.dev1 sorts before 1.0a1
        else:
            pre_key = (3,)  # final
        post_key = self.post if self.post is not None else (-1,)
        dev_key = (self.dev,) if self.dev is not None else (_INF,)
        object.__setattr__(self, "_key", (_trim(self.release), pre_key, post_key, dev_key))

    @classmethod
    def parse(cls, text: str | Version) -> Version:
        """Parse leniently; raises ``ValueError`` naming the text when no number can be found."""
        if isinstance(text, Version):
            return text
        if not isinstance(text, str):
            raise ValueError(f"invalid version {text!r}: expected a string")
        raw = text.strip()
        if not raw:
            raise ValueError("invalid version '': empty string")
        low = raw.lower()
        main, _, local = low.partition("+")
        huawei = _HUAWEI.match(main)
        if huawei:
            numbers = tuple(int(g) for g in huawei.groups() if g is not None)
            return cls(raw=raw, release=numbers, local=local)
        tokens = _TOKEN.findall(main)
        while tokens and not tokens[0].isdigit():
            tokens.pop(0)  # leading words: 'v', 'dtk', 'cann', …
        if not tokens:
            raise ValueError(f"invalid version {text!r}: no numeric release part")
        release: list[int] = []
        i = 0
        while i < len(tokens) and tokens[i].isdigit():
            release.append(int(tokens[i]))
            i += 1
        pre: list[int] | None = None
        post: list[int] | None = None
        dev: int | None = None
        current: list[int] | None = None  # where stray numbers after a tag go
        rest: list[str] = []
        while i < len(tokens):
            tok = tokens[i]
            number = int(tokens[i + 1]) if i + 1 < len(tokens) and tokens[i + 1].isdigit() else None
            step = 2 if number is not None else 1
            if tok.isdigit():
                if current is None:
                    rest = tokens[i:]
                    break
                current.append(int(tok))
            elif tok in _PRE_RANK and pre is None and post is None:
                pre = [_PRE_RANK[tok], number or 0]
                current = pre
                i += step
                continue
            elif (tok in _PRE_RANK and pre is not None) or tok == "dev":
                dev = number or 0
                current = None
                i += step
                continue
            elif tok in _POST_WORDS and post is None:
                post = [number or 0]
                current = post
                i += step
                continue
            else:
                rest = tokens[i:]
                break
            i += 1
        if rest:
            local = ".".join(rest) + ("+" + local if local else "")
        return cls(
            raw=raw,
            release=tuple(release),
            pre=tuple(pre) if pre is not None else None,
            post=tuple(post) if post is not None else None,
            dev=dev,
            local=local,
        )

    @property
    def key(self) -> Key:
        """The sort key (local labels excluded)."""
        return self._key

    @property
    def is_prerelease(self) -> bool:
        return self.pre is not None or self.dev is not None

    def __str__(self) -> str:
        return self.raw

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            try:
                other = Version.parse(other)
            except ValueError:
                return False
        if not isinstance(other, Version):
            return NotImplemented
        return self._key == other._key

    def __lt__(self, other: Version | str) -> bool:
        return self._key < Version.parse(other)._key

    def __le__(self, other: Version | str) -> bool:
        return self._key <= Version.parse(other)._key

    def __gt__(self, other: Version | str) -> bool:
        return self._key > Version.parse(other)._key

    def __ge__(self, other: Version | str) -> bool:
        return self._key >= Version.parse(other)._key


Operator = Literal["==", "!=", ">=", "<=", ">", "<", "~="]
_OPERATORS: tuple[Operator, ...] = ("==", "!=", ">=", "<=", "~=", ">", "<")
_SPEC = re.compile(r"^\s*(==|!=|>=|<=|~=|>|<)\s*(.*?)\s*$")

# A bound over sort keys: (key, inclusive). None means unbounded.
Bound = tuple[Key, bool] | None


def _floor_key(release: tuple[int, ...]) -> Key:
    """The smallest key with this release prefix (below its dev and pre-releases)."""
    return (_trim(release), (-2,), (-1,), (-1,))


@dataclass(frozen=True)
class Specifier:
    """One clause: an operator and a version, or a ``==X.*`` / ``!=X.*`` prefix."""

    operator: Operator
    version: Version
    wildcard: bool = False

    @classmethod
    def parse(cls, text: str) -> Specifier:
        m = _SPEC.match(text)
        if not m:
            raise ValueError(
                f"invalid version specifier {text!r}: expected an operator ({', '.join(_OPERATORS)}) "
                "followed by a version, e.g. '>=12.1'"
            )
        op, ver = m.group(1), m.group(2)
        if not ver:
            raise ValueError(f"invalid version specifier {text!r}: missing version after {op!r}")
        wildcard = ver.endswith(".*")
        if wildcard:
            if op not in ("==", "!="):
                raise ValueError(f"invalid version specifier {text!r}: '.*' is only allowed with == and !=")
            ver = ver[:-2]
            if not re.fullmatch(r"\d+(\.\d+)*", ver):
                raise ValueError(f"invalid version specifier {text!r}: a '.*' prefix must be numbers, e.g. '==12.*'")
        if "*" in ver:
            raise ValueError(f"invalid version specifier {text!r}: '*' may only end the version, as in '==12.*'")
        version = Version.parse(ver)
        if op == "~=" and len(version.release) < 2:
            raise ValueError(f"invalid version specifier {text!r}: '~=' needs at least two numbers, e.g. '~=2.4'")
        return cls(operator=cast(Operator, op), version=version, wildcard=wildcard)

    def _prefix_match(self, v: Version, prefix: tuple[int, ...]) -> bool:
        rel = v.release + (0,) * max(0, len(prefix) - len(v.release))
        return rel[: len(prefix)] == prefix

    def contains(self, version: Version | str) -> bool:
        v = Version.parse(version)
        op, ref = self.operator, self.version
        if self.wildcard:
            hit = self._prefix_match(v, ref.release)
            return hit if op == "==" else not hit
        if op == "==":
            return v == ref
        if op == "!=":
            return v != ref
        if op == ">=":
            return v >= ref
        if op == "<=":
            return v <= ref
        if op == ">":
            return v > ref
        if op == "<":
            return v < ref
        # ~=X.Y.Z  →  >=X.Y.Z, ==X.Y.*
        return v >= ref and self._prefix_match(v, ref.release[:-1])

    def bounds(self) -> tuple[Bound, Bound]:
        """Lower and upper bound of the versions this clause admits (``!=`` admits everything)."""
        op, ref = self.operator, self.version
        if op == "!=":
            return None, None
        if self.wildcard or op == "~=":
            prefix = ref.release if self.wildcard else ref.release[:-1]
            upper = (*prefix[:-1], prefix[-1] + 1)
            lower: Bound = (_floor_key(prefix), True) if self.wildcard else (ref.key, True)
            return lower, (_floor_key(upper), False)
        if op == "==":
            return (ref.key, True), (ref.key, True)
        if op in (">=", ">"):
            return (ref.key, op == ">="), None
        return None, (ref.key, op == "<=")

    def __str__(self) -> str:
        return f"{self.operator}{self.version}{'.*' if self.wildcard else ''}"


@dataclass(frozen=True)
class SpecifierSet:
    """Comma-separated clauses that must all hold. The empty set admits every version."""

    specifiers: tuple[Specifier, ...] = ()

    @classmethod
    def parse(cls, text: str | SpecifierSet) -> SpecifierSet:
        if isinstance(text, SpecifierSet):
            return text
        if not isinstance(text, str):
            raise ValueError(f"invalid version specifier {text!r}: expected a string")
        parts = [p.strip() for p in text.split(",")]
        if parts == [""]:
            return cls()
        if any(not p for p in parts):
            raise ValueError(f"invalid version specifier {text!r}: empty clause between commas")
        return cls(tuple(Specifier.parse(p) for p in parts))

    def contains(self, version: Version | str) -> bool:
        v = Version.parse(version)
        return all(s.contains(v) for s in self.specifiers)

    def __contains__(self, version: object) -> bool:
        if not isinstance(version, Version | str):
            return False
        return self.contains(version)

    def __iter__(self) -> Iterator[Specifier]:
        return iter(self.specifiers)

    def __bool__(self) -> bool:
        return bool(self.specifiers)

    def bounds(self) -> tuple[Bound, Bound]:
        """The tightest interval holding every admitted version (``!=`` clauses are ignored)."""
        lo: Bound = None
        hi: Bound = None
        for spec in self.specifiers:
            s_lo, s_hi = spec.bounds()
            if s_lo is not None and (lo is None or s_lo[0] > lo[0] or (s_lo[0] == lo[0] and not s_lo[1])):
                lo = s_lo
            if s_hi is not None and (hi is None or s_hi[0] < hi[0] or (s_hi[0] == hi[0] and not s_hi[1])):
                hi = s_hi
        return lo, hi

    def overlaps(self, other: SpecifierSet) -> bool:
        """Whether some version could satisfy both sets (interval test; ``!=`` clauses ignored)."""
        a_lo, a_hi = self.bounds()
        b_lo, b_hi = other.bounds()
        lo = a_lo if b_lo is None or (a_lo is not None and (a_lo[0], not a_lo[1]) > (b_lo[0], not b_lo[1])) else b_lo
        hi = a_hi if b_hi is None or (a_hi is not None and (a_hi[0], a_hi[1]) < (b_hi[0], b_hi[1])) else b_hi
        if lo is None or hi is None:
            return True
        if lo[0] < hi[0]:
            return True
        return lo[0] == hi[0] and lo[1] and hi[1]

    def __str__(self) -> str:
        return ",".join(str(s) for s in self.specifiers)


_REQ = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_\-]*)\s*((?:==|!=|>=|<=|~=|>|<).*)?$")


@dataclass(frozen=True)
class Requirement:
    """``name`` plus an optional specifier set, e.g. ``cuda>=12.4`` or ``cann>=8.0.RC1,<9``."""

    name: str
    specifier: SpecifierSet = SpecifierSet()

    @classmethod
    def parse(cls, text: str) -> Requirement:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"invalid requirement {text!r}: expected 'name' or 'name<op><version>', e.g. 'cuda>=12.4'")
        m = _REQ.match(text)
        if not m:
            if text.strip()[0] in "<>=!~":
                raise ValueError(f"invalid requirement {text!r}: missing runtime name before the version, e.g. 'cuda>=12.4'")
            if re.match(r"^\s*[A-Za-z][A-Za-z0-9_\-]*\s*[0-9]", text):
                raise ValueError(f"invalid requirement {text!r}: missing operator before the version, e.g. 'cuda>=12.4'")
            raise ValueError(
                f"invalid requirement {text!r}: expected a name (letters, digits, '_', '-') "
                "then an operator and version, e.g. 'cuda>=12.4'"
            )
        name, spec = m.group(1).lower(), m.group(2) or ""
        try:
            specifier = SpecifierSet.parse(spec)
        except ValueError as exc:
            raise ValueError(f"invalid requirement {text!r}: {exc}") from None
        return cls(name=name, specifier=specifier)

    def __str__(self) -> str:
        return f"{self.name}{self.specifier}"
