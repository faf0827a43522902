"""Progress: plain lines when the stream is not a terminal, a tqdm bar on a real terminal (pty)."""

from __future__ import annotations

import fcntl
import io
import os
import struct
import termios

from serving.batch.progress import Progress


def test_plain_lines_say_rows_rate_and_eta_when_not_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress(total=1000, done=100, stream=out, every_seconds=0)
    progress.advance(400)
    progress.close()
    [line] = out.getvalue().splitlines()
    assert line.startswith("progress: 500/1000 rows (50%), ") and "rows/s" in line
    assert "ETA" in line


def test_a_terminal_gets_a_tqdm_bar() -> None:
    main, child = os.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    with os.fdopen(child, "w") as terminal:
        progress = Progress(total=1000, stream=terminal)
        progress.advance(250)
        progress.close()
    shown = os.read(main, 4096).decode(errors="replace")
    os.close(main)
    assert "250/1.00k" in shown and "rows" in shown and "\r" in shown
