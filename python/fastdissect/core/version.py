"""The package version, where every layer can read it (the report pages, identities, selftest)."""

__version__ = "0.1.0"
