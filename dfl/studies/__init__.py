"""Studies: many runs and one report. ``grid`` runs cells x seeds (``--jobs``), ``compare`` is
``dfl-sim compare``, ``tables`` the defense evaluation tables, ``augsearch`` the augmentation search.
They reach plugins through the registries, never by import."""
