"""Every run of the golden corpus (``tests/golden.py``) writes the metrics recorded in ``tests/golden/``.

The corpus pins what users see while the core is reshaped: a refactor that changes one byte of any
``metrics.jsonl`` fails here. To accept an intended change, rerun ``python tests/golden.py record NAME``
and say why in the commit.
"""

from __future__ import annotations

import golden
import pytest


@pytest.mark.parametrize("name", sorted(golden.CASES))
def test_golden_metrics(name, tmp_path, monkeypatch):
    case = golden.CASES[name]
    if case.needs_cifar:
        root = golden.cifar_root()
        if root is None:
            pytest.skip("CIFAR-10 is not available (DFL_SIM_DATA or ../shared/datasets)")
        monkeypatch.setenv("DFL_SIM_DATA", str(root))
    expected = (golden.GOLDEN / f"{name}.jsonl").read_bytes()
    assert golden.produce(name, tmp_path) == expected
