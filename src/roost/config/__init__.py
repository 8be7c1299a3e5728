"""main.cf configuration: the parameter table, the reader, expansion and lookup tables."""

from __future__ import annotations

from roost.config.lookup import LookupTable, TableError, open_table, register_table_type
from roost.config.maincf import Entry, Problem, edit_main_cf, parse_main_cf
from roost.config.parameters import PARAMETERS, SERVICES, Parameter
from roost.config.settings import ConfigError, Settings, config_path, load_settings
from roost.config.types import ParamType

__all__ = [
    "PARAMETERS",
    "SERVICES",
    "ConfigError",
    "Entry",
    "LookupTable",
    "ParamType",
    "Parameter",
    "Problem",
    "Settings",
    "TableError",
    "config_path",
    "edit_main_cf",
    "load_settings",
    "open_table",
    "parse_main_cf",
    "register_table_type",
]
