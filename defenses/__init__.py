"""dfl-sim plugin package: defenses (registers into dfl.registries)."""
