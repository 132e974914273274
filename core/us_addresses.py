"""US states and ZIP codes: the USPS code a region names, and the one a ZIP code lies in."""

from __future__ import annotations

import re
from bisect import bisect_right

# USPS codes: the states, DC, the territories, the freely associated states and the military
# "states" (AA, AE, AP) that APO/FPO addresses use.
_CODES = (
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY "
    "NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY "
    "AS GU MP PR VI FM MH PW AA AE AP"
)
USPS_CODES = frozenset(_CODES.split())
# The territories and freely associated states that are ISO 3166-1 countries of their own but whose
# mail is addressed by US ZIP code: each one's ISO code is its USPS code.
ZIP_TERRITORIES = frozenset(["AS", "GU", "MP", "PR", "VI", "FM", "MH", "PW"])

ZIP_CODE = re.compile(r"^([0-9]{3})([0-9]{2})(-?[0-9]{4})?$")

# The code of each ZIP prefix (its first three digits), as ranges of prefixes: the USPS assigns
# a prefix to one sectional center, and so to one state. Gaps are prefixes no address uses.
_PREFIXES: tuple[tuple[int, int, str], ...] = (
    (5, 5, "NY"),
    (6, 7, "PR"),
    (8, 8, "VI"),
    (9, 9, "PR"),
    (10, 27, "MA"),
    (28, 29, "RI"),
    (30, 38, "NH"),
    (39, 49, "ME"),
    (50, 54, "VT"),
    (55, 55, "MA"),
    (56, 59, "VT"),
    (60, 69, "CT"),
    (70, 89, "NJ"),
    (90, 99, "AE"),
    (100, 149, "NY"),
    (150, 196, "PA"),
    (197, 199, "DE"),
    (200, 200, "DC"),
    (201, 201, "VA"),
    (202, 205, "DC"),
    (206, 219, "MD"),
    (220, 246, "VA"),
    (247, 268, "WV"),
    (270, 289, "NC"),
    (290, 299, "SC"),
    (300, 319, "GA"),
    (320, 339, "FL"),
    (340, 340, "AA"),
    (341, 349, "FL"),
    (350, 369, "AL"),
    (370, 385, "TN"),
    (386, 397, "MS"),
    (398, 399, "GA"),
    (400, 427, "KY"),
    (430, 459, "OH"),
    (460, 479, "IN"),
    (480, 499, "MI"),
    (500, 528, "IA"),
    (530, 549, "WI"),
    (550, 567, "MN"),
    (569, 569, "DC"),
    (570, 577, "SD"),
    (580, 588, "ND"),
    (590, 599, "MT"),
    (600, 629, "IL"),
    (630, 658, "MO"),
    (660, 679, "KS"),
    (680, 693, "NE"),
    (700, 714, "LA"),
    (716, 729, "AR"),
    (730, 732, "OK"),
    (733, 733, "TX"),
    (734, 749, "OK"),
    (750, 799, "TX"),
    (800, 816, "CO"),
    (820, 831, "WY"),
    (832, 838, "ID"),
    (840, 847, "UT"),
    (850, 865, "AZ"),
    (870, 884, "NM"),
    (885, 885, "TX"),
    (889, 898, "NV"),
    (900, 961, "CA"),
    (962, 966, "AP"),
    (967, 968, "HI"),
    (970, 979, "OR"),
    (980, 994, "WA"),
    (995, 999, "AK"),
)

# Prefixes shared by several codes, by full ZIP code: American Samoa inside Hawaii's 967, and the
# Pacific territories and freely associated states that share 969.
_ZIP_RANGES: tuple[tuple[int, int, str], ...] = (
    (96799, 96799, "AS"),
    (96910, 96932, "GU"),
    (96939, 96940, "PW"),
    (96941, 96944, "FM"),
    (96950, 96952, "MP"),
    (96960, 96960, "MH"),
    (96970, 96970, "MH"),
)
_SHARED_PREFIXES = frozenset(low // 100 for low, _, _ in _ZIP_RANGES)
# _PREFIXES is in order and its ranges do not overlap (a test checks it): the one range that may
# hold a prefix is the last that starts at or below it, found by bisection rather than a walk
# through all of them (most of a US address's validation, once on every US order).
_PREFIX_LOWS = [low for low, _, _ in _PREFIXES]


def usps_code(region: str) -> str | None:
    """The USPS code `region` names ("ca", "CA" and the ISO 3166-2 form "US-CA" all name CA), or
    None when it names none."""
    code = region.strip().upper().removeprefix("US-")
    return code if code in USPS_CODES else None


def is_zip_code(postal_code: str) -> bool:
    """A ZIP code as written on mail: five digits, optionally ZIP+4 (with or without the dash)."""
    return ZIP_CODE.fullmatch(postal_code.strip()) is not None


def code_of_zip(postal_code: str) -> str | None:
    """The USPS code of the state or territory a ZIP code lies in, or None for a value that is
    not a ZIP code or one no address uses."""
    found = ZIP_CODE.fullmatch(postal_code.strip())
    if found is None:
        return None
    prefix = int(found.group(1))
    if prefix in _SHARED_PREFIXES:
        number = prefix * 100 + int(found.group(2))
        for low, high, code in _ZIP_RANGES:
            if low <= number <= high:
                return code
        if prefix != 967:  # the rest of 967 is Hawaii's
            return None
    index = bisect_right(_PREFIX_LOWS, prefix) - 1
    if index < 0:
        return None
    _, high, code = _PREFIXES[index]
    return code if prefix <= high else None
