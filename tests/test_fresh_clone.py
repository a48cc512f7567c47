"""The suite on a fresh clone: what is committed is all the tests need.

A clone of the repository in an empty temporary directory, with nothing beside it and a
home directory of its own, runs the unit tests (the store on SQLite, the fake Stripe) with
this interpreter and passes. Anything read from outside the repository (Stripe's examples in a
neighbouring folder, an absolute path on the machine the project grew on, a file in ~)
fails here. The clone's own code is what runs: checked before the tests start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The unit tests: the store on SQLite, and the fake Stripe with its templates (the part that
# once read Stripe's examples from beside the repository).
FAST = [
    "tests/store",
    "tests/fakes/test_fake_stripe.py",
    "tests/fakes/test_stripe_templates.py",
    "-k",
    "not postgresql",
]
_WHERE_FROM = (
    "import importlib, sys\nfor name in sys.argv[1:]: print(importlib.import_module(name).__file__)"
)


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False
    )


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: there is nothing committed to clone")
    target = tmp_path / "keyvend"
    done = _run(["git", "clone", "--quiet", str(REPO), str(target)], tmp_path, dict(os.environ))
    assert done.returncode == 0, done.stderr
    return target


def test_the_fast_tests_pass_on_a_fresh_clone(clone: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("KEYVEND_", "PYTEST_", "STRIPE_", "DATABASE_", "REDIS_"))
        and name not in {"PYTHONPATH", "HOME"}
    }
    env["HOME"] = str(home)

    packages = ["bot", "handlers", "store", "migrations", "tests"]
    where = _run([sys.executable, "-c", _WHERE_FROM, *packages], clone, env)
    assert where.returncode == 0, where.stderr
    files = [Path(line) for line in where.stdout.split()]
    assert len(files) == len(packages) and all(f.is_relative_to(clone) for f in files), files

    run = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *FAST],
        clone,
        env,
    )

    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " error" not in run.stdout, run.stdout[-3000:]
