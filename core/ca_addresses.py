"""Canadian provinces, territories and postal codes: the code a region names, and those a postal code lies in."""

from __future__ import annotations

import re

# The ten provinces and three territories, as Canada Post and ISO 3166-2:CA write them.
PROVINCE_CODES = frozenset(["AB", "BC", "MB", "NB", "NL", "NS", "NT", "NU", "ON", "PE", "QC", "SK", "YT"])

# Letter digit letter, a space, digit letter digit. Canada Post never uses D, F, I, O, Q or U
# (machines misread them) and never starts a code with W or Z.
POSTAL_CODE = re.compile(r"^[ABCEGHJ-NPRSTVXY][0-9][ABCEGHJ-NPRSTV-Z] ?[0-9][ABCEGHJ-NPRSTV-Z][0-9]$")

# A postal code's first letter is its district, and each district lies in one province or
# territory, save X, which serves both the Northwest Territories and Nunavut.
_DISTRICTS: dict[str, tuple[str, ...]] = {
    "A": ("NL",),
    "B": ("NS",),
    "C": ("PE",),
    "E": ("NB",),
    "G": ("QC",),
    "H": ("QC",),
    "J": ("QC",),
    "K": ("ON",),
    "L": ("ON",),
    "M": ("ON",),
    "N": ("ON",),
    "P": ("ON",),
    "R": ("MB",),
    "S": ("SK",),
    "T": ("AB",),
    "V": ("BC",),
    "X": ("NT", "NU"),
    "Y": ("YT",),
}


def province_code(region: str) -> str | None:
    """The province or territory code `region` names ("on", "ON" and the ISO 3166-2 form "CA-ON"
    all name ON), or None when it names none."""
    code = region.strip().upper().removeprefix("CA-")
    return code if code in PROVINCE_CODES else None


def provinces_of_postal_code(postal_code: str) -> tuple[str, ...]:
    """The codes of the provinces or territories a postal code may lie in (A1A 1A1 or A1A1A1, in
    either case): one, or NT and NU for an X code; none for a value that is no Canadian postal code."""
    code = postal_code.strip().upper()
    if POSTAL_CODE.fullmatch(code) is None:
        return ()
    return _DISTRICTS[code[0]]
