"""Progress of generation stages: log lines when not in a terminal, a bar in one."""

from __future__ import annotations

import logging
import os
import pty
import subprocess
import sys
from pathlib import Path

from agent.backends import SamplingParams, make_generator, user
from loop.progress import Tracked, reporter


def test_plain_lines_when_not_a_terminal(caplog, monkeypatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    with caplog.at_level(logging.INFO, logger="selfloop.progress"):
        update, finish = reporter("round 3 respond", 10, every=0.0)
        for done in (4, 8, 10):
            update(done, 10)
        finish()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:2] == [
        "round 3 respond: 4/10 prompts (0 s)",
        "round 3 respond: 8/10 prompts (0 s)",
    ]
    assert lines[-1].startswith("round 3 respond: 10/10 prompts in ") and len(lines) == 3


def test_tracked_generator_reports_and_delegates(caplog, monkeypatch, tiny_model_dir: Path) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    gen = make_generator(str(tiny_model_dir))
    seen: list[tuple[int, int]] = []
    wrapped = Tracked(gen, lambda: "round 1 evaluate")
    with caplog.at_level(logging.INFO, logger="selfloop.progress"):
        out = wrapped.generate(
            [user("Hi"), user("Yo"), user("Hey")],
            SamplingParams(max_tokens=3),
            progress=lambda d, t: seen.append((d, t)),
        )
    assert len(out) == 3 and all(r.ok for r in out)
    assert seen and seen[-1] == (3, 3)  # the caller's own callback still runs
    assert caplog.records[-1].getMessage().startswith("round 1 evaluate: 3/3 prompts in ")
    assert wrapped.model_name == gen.model_name and wrapped.adapters == gen.adapters
    wrapped.close()


def test_a_bar_in_a_terminal() -> None:
    code = (
        "import time; from loop.progress import reporter\n"
        "u, f = reporter('round 1 propose', 4)\n"
        "for d in range(1, 5):\n    u(d, 4); time.sleep(0.15)\n"
        "f()\n"
    )
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=child,
        stdout=child,
        stderr=child,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
    )
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(main)
    screen = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "round 1 propose" in screen and "━" in screen and "/4" in screen
