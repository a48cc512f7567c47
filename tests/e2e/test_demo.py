"""`make demo` works: the whole sale runs as a newcomer would run it, and so does the played one.

The demo is run as `make demo` runs it, a `python -m tests.support.demo` process, with its
temporary directory inside the test's own; what it prints is what is checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.fakes.telegram import SentMessage
from tests.support.demo import KEYS, shown

REPO = Path(__file__).resolve().parents[2]


def run_demo(
    tmp_path: Path, *args: str, stdin: str = "", **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tests.support.demo", *args],
        check=False,
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path), **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def delivered_keys(output: str) -> list[str]:
    return re.findall(r"\|\|(.+?)\|\|", output)


def test_the_demo_sells_delivers_and_checks_one_key(tmp_path: Path) -> None:
    demo = run_demo(tmp_path)

    assert demo.returncode == 0, demo.stderr
    assert demo.stderr == ""
    out = demo.stdout
    assert "checkout.session.completed (signed): 200 fulfilled" in out
    keys = delivered_keys(out)
    assert len(keys) == 1 and keys[0] in KEYS, keys
    assert f"SPACE: {len(KEYS) - 1} / 0 / 1" in out  # the admin's /stats: one sold
    assert out.index("admin > /stats") > out.index(f"||{keys[0]}||")
    assert "all invariants hold" in out.split("$ keyvend check")[1]
    assert list(tmp_path.iterdir()) == [], "the demo left its temporary directory behind"


def test_a_person_can_play_the_buyer_by_typing_and_pressing_numbers(tmp_path: Path) -> None:
    # The catalogue's product is [1]; its card's "Pay by card" [5]; the checkout's link [8].
    demo = run_demo(tmp_path, "--interactive", stdin="/start\n1\n5\n8\n/orders\n")

    assert demo.returncode == 0, demo.stderr
    out = demo.stdout
    assert "buyer > [8] 💳 Pay $9.99" in out
    keys = delivered_keys(out)
    assert len(keys) == 1 and keys[0] in KEYS, keys
    assert "× 1 · delivered" in out.split("buyer > /orders")[1]


def test_a_failing_demo_says_why_in_one_line_and_exits_non_zero(tmp_path: Path) -> None:
    demo = run_demo(tmp_path, MAX_UNPAID_ORDERS="0")  # as if exported in the user's shell

    assert demo.returncode == 1
    assert (
        demo.stderr.startswith("demo failed: MAX_UNPAID_ORDERS: ") and demo.stderr.count("\n") == 1
    ), demo.stderr
    assert "Traceback" not in demo.stdout + demo.stderr


def test_a_key_is_shown_between_bars_where_its_spoiler_is() -> None:
    # Entity offsets count UTF-16 code units: the emoji before the key counts two.
    text = "🔑 key: ABC-123\nRedeem it"
    message = SentMessage(
        method="sendMessage",
        chat_id=1,
        message_id=1,
        text=text,
        params={},
        entities=[{"type": "spoiler", "offset": 8, "length": 7}],
        time=0.0,
        plain_text=text,
    )

    assert shown(message) == "🔑 key: ||ABC-123||\nRedeem it"
