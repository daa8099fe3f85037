"""The simulator's vocabulary: Leap's enums, programs per region, action texts, ids and timestamps."""

from __future__ import annotations

import functools
import hashlib
import re
import uuid
from datetime import UTC, datetime, timedelta

# Enums, in the order of Leap's Enrollments v2 definition.
REGIONS = ("CAISO", "ERCOT", "NYISO", "ISONE", "PJM", "SERC", "WECC_SW", "WECC_PC")
REGION_WEIGHTS = (35, 20, 12, 10, 15, 3, 3, 2)
CLASSIFICATIONS = ("RESIDENTIAL", "COMMERCIAL")
CLASSIFICATION_WEIGHTS = (80, 20)
METER_TYPES = ("UTILITY_METER", "SUBMETER", "DEVICE")
METER_TYPE_WEIGHTS = (70, 10, 20)
STATUSES = ("ACTIVE", "ELIGIBLE", "INELIGIBLE", "NOT_PARTICIPATING", "PENDING")
STATUS_WEIGHTS = (45, 25, 10, 10, 10)
LOAD_TYPES = (
    "HVAC",
    "EV_CHARGING",
    "BATTERY_STORAGE",
    "COLD_STORAGE",
    "PUMPING",
    "WATER_HEATING",
    "BUILDING_AUTOMATION",
    "GENERATION",
    "MANUFACTURING",
    "LIGHTING",
    "OTHER",
)
LOAD_WEIGHTS = (50, 12, 14, 2, 2, 6, 5, 3, 1, 3, 2)
ACTION_TYPES = (
    "IS_AUTHORIZED",
    "DOCUMENTS_SIGNED",
    "HAS_AMI",
    "NOT_ENROLLED_IN_CONFLICTING_PROGRAM",
    "PARTICIPATING",
    "HAS_MARKET_REGISTRATION",
    "NO_MISSING_FIELDS",
    "GENERATOR",
    "ADDRESS",
    "HAS_NOMINATIONS",
    "HAS_BIDDING_STRATEGY",
    "IS_ELIGIBLE",
    "IS_ASSIGNED_TO_A_RESOURCE",
    "MEETS_EXTRA_PROGRAM_REQUIREMENTS",
)
PROGRAMS = (
    "CAISO-CCA-SC_ONLY",
    "CCA",
    "CEC-DSGS-OPTION4",
    "CEC-DSGS",
    "CONED-CSRP",
    "CONED-DLRP",
    "DRAM",
    "ELRP",
    "ENERGY-ONLY",
    "ERCOT-ERS",
    "EVERSOURCE-CS",
    "MA_DOER-CPS",
    "NATGRID-CS",
    "NRG-REALTIME",
    "NRG-RED",
    "NYISO-SCR",
    "ONCOR-CLM",
    "PGE-ART",
    "PGE-CBP",
    "PJM-CAPACITY",
    "PSEGLI-CSRP",
    "PSEGLI-DLRP",
    "RIE-CS",
    "UNITIL-CS",
    "PSE-RPO",
    "SRP-RPO",
    "TVA-RPO",
    "CAISO-ELRP-A4",
    "CEC-DSGS-OPTION2",
    "ENERGYHUB-CS",
    "CT_GB-ESS",
)
CREATED_BY = ("PARTNER", "LEAP", "UTILITY")

# (program_identifier, delivery period prefix) a meter of each region may enroll in.
REGION_PROGRAMS: dict[str, tuple[tuple[str, str], ...]] = {
    "CAISO": (
        ("CCA", "CAISO-CCA"),
        ("DRAM", "CAISO-DRAM"),
        ("ELRP", "CAISO-ELRP"),
        ("CEC-DSGS", "CEC-DSGS"),
        ("PGE-CBP", "PGE-CBP"),
    ),
    "ERCOT": (("ERCOT-ERS", "ERCOT-ERS"), ("ONCOR-CLM", "ONCOR-CLM"), ("NRG-RED", "NRG-RED")),
    "NYISO": (
        ("NYISO-SCR", "NYISO-SCR"),
        ("CONED-CSRP", "CONED-CSRP"),
        ("CONED-DLRP", "CONED-DLRP"),
        ("PSEGLI-CSRP", "PSEGLI-CSRP"),
    ),
    "ISONE": (
        ("MA_DOER-CPS", "MA_DOER-CPS"),
        ("NATGRID-CS", "NATGRID-CS"),
        ("EVERSOURCE-CS", "EVERSOURCE-CS"),
        ("CT_GB-ESS", "CT_GB-ESS"),
    ),
    "PJM": (("PJM-CAPACITY", "PJM-CAPACITY"), ("ENERGYHUB-CS", "ENERGYHUB-CS")),
    "SERC": (("TVA-RPO", "TVA-RPO"),),
    "WECC_SW": (("SRP-RPO", "SRP-RPO"),),
    "WECC_PC": (("PSE-RPO", "PSE-RPO"),),
}

# (action_type, action_code, action_description, weight) of partner actions.
PARTNER_ACTIONS = (
    (
        "IS_AUTHORIZED",
        "AUTH_0001",
        "End customer must re-authorize meter. Learn more in our partner guide",
        30,
    ),
    (
        "NO_MISSING_FIELDS",
        "SERV_0005",
        "Partner needs configuration for fields: Voltage Group, CBL Method, Load Zone.",
        20,
    ),
    ("DOCUMENTS_SIGNED", "DOCS_0001", "End customer must sign the program enrollment agreement.", 12),
    ("HAS_AMI", "AMI_0001", "The utility has no interval (AMI) data for this meter yet.", 8),
    (
        "NOT_ENROLLED_IN_CONFLICTING_PROGRAM",
        "CONF_0001",
        "The meter is enrolled in a conflicting program; unenroll it first.",
        8,
    ),
    ("ADDRESS", "ADDR_0001", "The service address could not be verified; update the meter address.", 7),
    ("IS_ELIGIBLE", "ELIG_0002", "The meter does not meet the program's eligibility rules.", 6),
    ("GENERATOR", "GEN_0001", "Backup generator details are required for this program.", 4),
    (
        "MEETS_EXTRA_PROGRAM_REQUIREMENTS",
        "XREQ_0001",
        "The program requires a minimum curtailable load; confirm the nameplate capacity.",
        5,
    ),
)
LEAP_ACTIONS = (
    ("HAS_NOMINATIONS", "LEAP_0001", "This meter does not have nominations set"),
    ("IS_ASSIGNED_TO_A_RESOURCE", "LEAP_0001", "The meter is not enrolled in the program"),
    ("HAS_MARKET_REGISTRATION", "LEAP_0002", "The meter is awaiting market registration"),
)
CUSTOMER_GROUPS = ("", "Residential North", "Residential South", "SMB", "Enterprise", "Multifamily")
CUSTOMER_GROUP_WEIGHTS = (40, 18, 18, 12, 7, 5)
TAGS = ("vip", "pilot", "solar", "battery", "ev", "fleet", "low-income", "legacy")
# Tag bitmasks a meter can carry, with weights: most have none, some one, a few two.
TAG_MASKS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 4 | 8, 16 | 32, 1 | 2)
TAG_MASK_WEIGHTS = (55, 4, 6, 7, 6, 6, 3, 4, 3, 3, 2, 1)

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
END_OF_TIME = "9000-12-31T23:59:59.999999999Z"
"""Leap's open-ended sentinel (nanosecond precision, year 9000)."""


@functools.cache
def bits(mask: int) -> tuple[int, ...]:
    """The set bits of a 16-bit mask, lowest first."""
    return tuple(b for b in range(16) if mask >> b & 1)


# --- meter ids: a uuid4-shaped id that encodes its index, so lookups need no table ---------------
#
# The id's first 32 bits are the index mixed by a bijection keyed by the seed (so the index can be
# read back); the other 96 come from `meter_hash`, the meter's 64 hashed bits that also pick its
# generated details (render.py), and the uuid4 version and variant bits are then set.

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
MIX32 = 0x9E3779B1  # odd, so multiplication modulo 2**32 is invertible
_MIX32_INV = pow(MIX32, -1, 1 << 32)
LOW32 = 0xD1B54A32D192ED03  # the id's last 32 bits: bits 32-63 of meter_hash times this, modulo 2**64
_UUID4_CLEAR = ~(0xF000 << 64 | 0xC000 << 48)
_UUID4_SET = 0x4000 << 64 | 0x8000 << 48


def mix32(index: int, key: int) -> int:
    x = (index ^ key) & _MASK32
    x = (x * MIX32) & _MASK32
    return x ^ (x >> 16)


def _unmix(value: int, key: int) -> int:
    x = value ^ (value >> 16)
    x = (x * _MIX32_INV) & _MASK32
    return x ^ key


def seed_key(seed: int) -> int:
    """The 32-bit key of the index bijection."""
    return int.from_bytes(hashlib.blake2b(str(seed).encode(), digest_size=4).digest(), "big")


def seed_salt(seed: int) -> int:
    """The 64-bit salt of `meter_hash`."""
    return int.from_bytes(hashlib.blake2b(f"salt:{seed}".encode(), digest_size=8).digest(), "big")


def meter_hash(index: int, salt: int) -> int:
    """64 well-mixed bits of (seed, index): splitmix64's finalizer."""
    x = (index + salt) * 0x9E3779B97F4A7C15 & _MASK64
    x = (x ^ x >> 30) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ x >> 27) * 0x94D049BB133111EB & _MASK64
    return x ^ x >> 31


def make_meter_id(index: int, key: int, bits: int) -> str:
    """The id of meter `index`, given its `meter_hash` bits."""
    low = (bits * LOW32 & _MASK64) >> 32
    h = f"{(mix32(index, key) << 96 | bits << 32 | low) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def meter_index(meter_id: str, key: int, salt: int, size: int) -> int | None:
    """The index a meter id encodes, or None when it is not one of this portfolio's ids."""
    try:
        value = uuid.UUID(meter_id)
    except ValueError:
        return None
    index = _unmix(value.int >> 96, key)
    if index >= size or make_meter_id(index, key, meter_hash(index, salt)) != str(value):
        return None
    return index


PARTNER_REFERENCE = re.compile(r"^site-(\d{7,})$")
CONNECTION_REFERENCE = re.compile(r"^conn-(\d{7,})$")


# --- timestamps: integers of microseconds since the epoch on the inside, RFC 3339 on the wire ----

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$")


def to_us(dt: datetime) -> int:
    delta = dt.astimezone(UTC) - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class _Dates(dict[int, str]):
    """`YYYY-MM-DD` by day since the epoch, filled on demand."""

    def __missing__(self, day: int) -> str:
        value = self[day] = (_EPOCH + timedelta(days=day)).date().isoformat()
        return value


DATES = _Dates()
HOURS_MINUTES = tuple(f"{h:02d}:{m:02d}" for h in range(24) for m in range(60))
SECONDS = tuple(f"{s:02d}" for s in range(60))
"""(A table of all 86,400 `HH:MM:SS` is slower over a sweep: its random reads miss the CPU cache.)"""


def fmt_us(us: int) -> str:
    """Audit style: `2024-04-24T16:03:06.785318Z`."""
    second, fraction = divmod(us, 1_000_000)
    day, second = divmod(second, 86_400)
    return f"{DATES[day]}T{HOURS_MINUTES[second // 60]}:{SECONDS[second % 60]}.{fraction:06d}Z"


def fmt_ms(us: int) -> str:
    """Deadline style: `2024-07-29T00:00:00.000Z`."""
    return from_us(us).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def fmt_s(us: int) -> str:
    """Whole seconds: `2024-11-01T00:00:00Z`."""
    return from_us(us).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def parse_rfc3339_us(value: str) -> int | None:
    """RFC 3339 with up to nine fraction digits -> microseconds (nanoseconds truncated)."""
    m = _RFC3339.match(value)
    if not m:
        return None
    year, month, day, hour, minute, second, frac, zone = m.groups()
    try:
        dt = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC)
        if zone not in ("Z", "z"):
            dt = datetime.fromisoformat(dt.strftime("%Y-%m-%dT%H:%M:%S") + zone)
    except ValueError:
        return None
    return to_us(dt) + int((frac or "0").ljust(9, "0")[:6])
