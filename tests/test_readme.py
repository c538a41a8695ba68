"""README.md's configuration table names every setting, with the default the code uses."""

from __future__ import annotations

import re
from pathlib import Path

from intake.settings import EMBEDDED_BROKER_URL, Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def _configuration_rows() -> dict[str, str]:
    """`INTAKE_*` variable -> its default cell, from the README's "Configuration" table."""
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("| `INTAKE_"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        for name in re.findall(r"`(INTAKE_[A-Z_]+)`", cells[0]):
            rows[name] = cells[-1]
    return rows


def _documented_default(cell: str) -> str:
    quoted = re.findall(r"`([^`]*)`", cell)
    return quoted[0] if quoted else ""


def _code_default(name: str) -> str:
    field = Settings.model_fields[name]
    value = field.default
    if name == "broker_url":
        return EMBEDDED_BROKER_URL
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_setting_is_in_the_readme_and_nothing_else() -> None:
    """Each Settings field has a README row as INTAKE_<NAME>, and each row is a setting."""
    documented = set(_configuration_rows())
    in_code = {f"INTAKE_{name.upper()}" for name in Settings.model_fields}
    assert documented == in_code


def test_readme_defaults_are_the_code_defaults() -> None:
    """The default column shows what the code uses when the variable is unset."""
    mismatches = {}
    for variable, cell in _configuration_rows().items():
        name = variable.removeprefix("INTAKE_").lower()
        documented = _documented_default(cell)
        if documented != _code_default(name) and not (
            documented == "" and _code_default(name) == ""
        ):
            mismatches[variable] = (documented, _code_default(name))
    assert mismatches == {}
