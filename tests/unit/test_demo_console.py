"""The demo's status line: redrawn in place on a terminal, plain throttled lines in a log."""

from __future__ import annotations

import pytest

from stream_vae.demo import Console


def test_piped_status_prints_whole_lines_and_throttles(capsys: pytest.CaptureFixture[str]) -> None:
    con = Console(quiet=False, every_s=3600)  # capsys's stderr is not a terminal
    assert not con.tty
    con.status("sent 1")
    con.status("sent 2")  # within every_s of the first: skipped
    con.status("")  # the terminal's "clear the line" means nothing in a log
    err = capsys.readouterr().err
    assert err == "sent 1\n"


def test_piped_status_prints_again_after_the_interval(capsys: pytest.CaptureFixture[str]) -> None:
    con = Console(quiet=False, every_s=0)
    con.status("sent 1")
    con.status("sent 2")
    assert capsys.readouterr().err.splitlines() == ["sent 1", "sent 2"]


def test_terminal_status_redraws_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    con = Console(quiet=False)
    con.tty = True
    con.status("sent 1")
    con.status("sent 2")
    err = capsys.readouterr().err
    assert "\n" not in err and err.count("\r") == 2 and err.rstrip().endswith("sent 2")


def test_quiet_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    con = Console(quiet=True, every_s=0)
    con.status("sent 1")
    con.say("done")
    assert capsys.readouterr().err == ""
