"""The VAT rate table (app/data/vat_rates.json), loaded and checked once."""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from pathlib import Path

COUNTRY_CODE = re.compile(r"[A-Z]{2}")
CURRENCY_CODE = re.compile(r"[A-Z]{3}")

# Codes that the EU (EL for Greece) and common usage (UK) use in place of the
# ISO 3166-1 alpha-2 code.
ALIASES = {"EL": "GR", "UK": "GB"}


class VatDataError(ValueError):
    """The VAT rate file is missing, unreadable or has an invalid entry."""


@dataclass(frozen=True)
class CountryRates:
    """One country's VAT rates, as the API returns them."""

    code: str
    name: str
    currency: str
    eu_member: bool
    standard_rate: float
    reduced_rates: tuple[float, ...]
    super_reduced_rate: float | None
    effective_date: str

    def to_dict(self, source_date: str) -> dict:
        return {
            "country": {"code": self.code, "name": self.name},
            "currency": self.currency,
            "eu_member": self.eu_member,
            "standard_rate": self.standard_rate,
            "reduced_rates": list(self.reduced_rates),
            "super_reduced_rate": self.super_reduced_rate,
            "effective_date": self.effective_date,
            "source_date": source_date,
        }


@dataclass(frozen=True)
class VatTable:
    """All countries with VAT data, plus where the data comes from."""

    source: str
    source_date: str
    countries: dict[str, CountryRates]

    def get(self, code: str) -> CountryRates | None:
        return self.countries.get(code)


def _rate(path: Path, code: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise VatDataError(
            f"{path}: countries.{code}.{key} is {value!r}; expected a percentage "
            "such as 19.0"
        )
    if not 0 <= value < 100:
        raise VatDataError(
            f"{path}: countries.{code}.{key} is {value}; expected 0 <= rate < 100"
        )
    return float(value)


def _date(path: Path, where: str, value: object) -> str:
    try:
        datetime.date.fromisoformat(str(value))
    except ValueError:
        raise VatDataError(
            f"{path}: {where} is {value!r}; expected a date as YYYY-MM-DD"
        ) from None
    return str(value)


def _country(path: Path, code: str, entry: dict) -> CountryRates:
    if not COUNTRY_CODE.fullmatch(code):
        raise VatDataError(
            f"{path}: country key {code!r} is not an ISO 3166-1 alpha-2 code"
        )
    for key in ("name", "currency", "eu_member", "standard_rate", "reduced_rates"):
        if key not in entry:
            raise VatDataError(f"{path}: countries.{code} has no {key!r}")
    if not CURRENCY_CODE.fullmatch(str(entry["currency"])):
        raise VatDataError(
            f"{path}: countries.{code}.currency is {entry['currency']!r}; "
            "expected an ISO 4217 code such as EUR"
        )
    reduced = entry["reduced_rates"]
    if not isinstance(reduced, list):
        raise VatDataError(f"{path}: countries.{code}.reduced_rates is not a list")
    super_reduced = entry.get("super_reduced_rate")
    return CountryRates(
        code=code,
        name=str(entry["name"]),
        currency=entry["currency"],
        eu_member=bool(entry["eu_member"]),
        standard_rate=_rate(path, code, "standard_rate", entry["standard_rate"]),
        reduced_rates=tuple(
            sorted(_rate(path, code, "reduced_rates", r) for r in reduced)
        ),
        super_reduced_rate=(
            None
            if super_reduced is None
            else _rate(path, code, "super_reduced_rate", super_reduced)
        ),
        effective_date=_date(
            path, f"countries.{code}.effective_date", entry.get("effective_date")
        ),
    )


def load(path: Path | str) -> VatTable:
    """Read and check the VAT rate file, raising VatDataError on a bad entry."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise VatDataError(f"cannot read the VAT rate file {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise VatDataError(f"{path} is not valid JSON: {error}") from None

    for key in ("source", "source_date", "countries"):
        if key not in document:
            raise VatDataError(f"{path} has no top-level {key!r}")
    countries = {
        code: _country(path, code, entry)
        for code, entry in document["countries"].items()
    }
    return VatTable(
        source=str(document["source"]),
        source_date=_date(path, "source_date", document["source_date"]),
        countries=countries,
    )
