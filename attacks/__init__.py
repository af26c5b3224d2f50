"""dfl-sim plugin package: attacks (registers into dfl.registries)."""
