"""The package version, read by the native build as well."""

__version__ = "0.1.0"
