"""docs/clients.md's examples, run as written against the real stack: every ```python block that
starts with `# example: NAME`, in a scratch directory, with the stack's address and token in
ROLLOUT_SANDBOX_URL and ROLLOUT_SANDBOX_TOKEN (as the page tells its readers to set them)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack import ROOT, Stack

pytestmark = pytest.mark.integration
PAGE = ROOT / "docs" / "clients.md"
BLOCK = re.compile(r"```python\n(# example: ([\w-]+)\n.*?)```", re.S)
EXAMPLES = {name: code for code, name in BLOCK.findall(PAGE.read_text())}


def test_the_page_has_its_examples() -> None:
    assert set(EXAMPLES) == {"sync", "files", "async", "errors", "minisweagent", "provider-sync", "provider-async"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_an_example_runs_as_written(stack: Stack, tmp_path: Path, name: str) -> None:
    script = tmp_path / f"example_{name}.py"  # not minisweagent.py: it would hide the package
    script.write_text(EXAMPLES[name])
    env = {
        **os.environ,
        "ROLLOUT_SANDBOX_URL": stack.base,
        "ROLLOUT_SANDBOX_TOKEN": stack.token,
        "MSWEA_GLOBAL_CONFIG_DIR": str(tmp_path / "mswea"),
    }
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    expected = {
        "sync": "0 -1\n",
        "files": "403 permission_denied",
        "async": "['0', '1', '2', '3', '4', '5', '6', '7']",
        "errors": "1.0",
        "minisweagent": "['trainer', 'agent', 'agent']",
        "provider-sync": "(0, 'hi\\n')",
        "provider-async": "'stdout': '2\\n'",
    }[name]
    assert expected in run.stdout, run.stdout
