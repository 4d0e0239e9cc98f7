"""scaleq.config is a leaf: reading a config imports no torch, graph library, model or data code."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "torch_cluster", "torch_geometric", "scaleq.models", "scaleq.data")

# A fresh interpreter: this test process has imported all of them already.
PROBE = f"""
import json, sys
import scaleq.config
config = scaleq.config.load_config()  # the embedded default, through extends, validated
forbidden = {FORBIDDEN!r}
print(json.dumps(sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden))))
"""


def test_loading_a_config_imports_no_torch_models_or_data():
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    imported = json.loads(result.stdout)
    assert imported == [], f"importing scaleq.config imported {imported[:10]}"
