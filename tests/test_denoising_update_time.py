"""benchmarks/denoising_update_time.py on a tiny network: four timings in its JSON."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "denoising_update_time.py"


def test_update_times_of_a_tiny_dncnn(tmp_path):
    out = tmp_path / "update_time.json"
    args = ["--depth", "4", "--width", "4", "--batch", "2", "--patch", "8", "--warmup", "1"]
    args += ["--updates", "1", "--out", str(out)]
    subprocess.run([sys.executable, str(SCRIPT), *args], check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["settings"]["depth"] == 4 and result["machine"]["torch"]
    for key in ("float32-plain_ms", "float32-heads_ms", "bfloat16-plain_ms", "bfloat16-heads_ms"):
        assert result[key] > 0
