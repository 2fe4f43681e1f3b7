"""The README's Python snippets run as written, in order, in a fresh process (the docs cannot rot)."""

import re
import subprocess
import sys
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippets_run(tmp_path):
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(snippets) >= 3, "the README should show the package, remote-code and pipeline loading paths"
    script = tmp_path / "readme_snippets.py"
    script.write_text("\n".join(snippets))
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'label': 'LABEL_" in result.stdout  # the pipeline printed its predictions
