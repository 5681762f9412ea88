"""Files that are never torn and never run code: atomic writes, locks, tensor files, fingerprints."""
