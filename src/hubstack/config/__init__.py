"""The one config file (``hubstack.yaml``): schema, defaults, loading and validation."""

from hubstack.config.load import ConfigError, dump, load
from hubstack.config.models import Config, Environment, Machine

__all__ = ["Config", "ConfigError", "Environment", "Machine", "dump", "load"]
