"""The CLI clients' terminal output: ``transcribe``'s rich progress bar and ``stream``'s live
captions on a real pseudo-terminal, and plain lines (no escape codes) when piped.

Real gateway and marker engine on loopback, a private redis-server, the CLI as a subprocess whose
stdout or stderr is the slave side of a pty.
"""

from __future__ import annotations

import asyncio
import os
import pty
import re
import sys
from pathlib import Path

from tests.helpers.gateway import engine, gateway, gateway_config
from tests.helpers.jobs import REPO, marker_wav, redis_server, unique_prefix
from tests.test_jobs_interop import _clean_env

AUDIO = marker_wav([51, 52, 53], sr=16000)
ESC = "\x1b["


async def run_cli(*args: str, tty: str | None) -> tuple[int, str, str]:
    """Run ``streamproxy ARGS``; ``tty`` = "stdout" or "stderr" puts that stream on a pty."""
    master = slave = -1
    out_target: int = asyncio.subprocess.PIPE
    err_target: int = asyncio.subprocess.PIPE
    if tty is not None:
        master, slave = pty.openpty()
        if tty == "stdout":
            out_target = slave
        else:
            err_target = slave
    env = _clean_env(TERM="xterm-256color", COLUMNS="100")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamproxy", *args, cwd=str(REPO), env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=out_target, stderr=err_target,
    )  # fmt: skip
    captured = b""
    if tty is not None:
        os.close(slave)

        def drain() -> bytes:
            chunks = []
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks)

        reader = asyncio.get_running_loop().run_in_executor(None, drain)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    if tty is not None:
        captured = await asyncio.wait_for(reader, 10)
        os.close(master)
        if tty == "stdout":
            out = captured
        else:
            err = captured
    return proc.returncode or 0, (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace")


async def test_transcribe_progress_bar_on_a_terminal_and_plain_when_piped(tmp_path: Path) -> None:
    wav_file = tmp_path / "a.wav"
    wav_file.write_bytes(AUDIO)
    async with redis_server(tmp_path / "redis") as rs, engine("marker") as eport:
        cfg = gateway_config(
            [f"ws://127.0.0.1:{eport}"],
            **{"queue.redis_url": rs.url, "queue.prefix": unique_prefix(), "server.data_dir": str(tmp_path / "d")},
        )
        async with gateway(cfg) as gw:
            from streamproxy.jobs.routes import start_jobs

            await start_jobs(gw.runner.app)
            args = ("transcribe", str(wav_file), "--url", f"http://127.0.0.1:{gw.port}", "--mode", "async", "--wait")
            code, out, err = await run_cli(*args, tty="stderr")
            assert code == 0, err
            assert out.strip() == "w51 w52 w53"  # the result itself stays plain on stdout
            assert ESC in err and "━" in err, repr(err[-500:])  # rich's bar, drawn in place
            assert "100%" in err and "completed" in err

            code, out, err = await run_cli(*args, tty=None)
    assert code == 0 and out.strip() == "w51 w52 w53"
    assert ESC not in err and "\r" not in err
    lines = err.splitlines()
    assert all(re.match(r"^\[\s*\d+\.\ds\] ", ln) for ln in lines), lines
    assert len(lines) == len(set(lines)), "one line per change, not per poll"
    assert lines[-1].split("] ", 1)[1].startswith("100.0% completed"), lines


async def test_stream_live_captions_on_a_terminal_and_finals_only_when_piped(tmp_path: Path) -> None:
    wav_file = tmp_path / "a.wav"
    wav_file.write_bytes(AUDIO)
    async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"])) as gw:
        args = ("stream", str(wav_file), "--url", f"ws://127.0.0.1:{gw.port}", "--fast")
        code, out, err = await run_cli(*args, tty="stdout")
        assert code == 0, err
        assert "\x1b[2mw51" in out, repr(out)  # the interim, dim, on the live line
        assert not re.search(r"\] (w\d+)\r\n\x1b\[2m\1", out), repr(out)  # cleared, not redrawn after its final
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
        finals = [ln.strip() for ln in plain.replace("\r", "\n").splitlines() if re.match(r"^\s*\[\s*\d", ln)]
        assert [f.split("] ", 1)[1] for f in finals] == ["w51", "w52", "w53"], finals

        code, out, err = await run_cli(*args, tty=None)
    assert code == 0, err
    assert ESC not in out and "\r" not in out
    assert [ln.split("] ", 1)[1] for ln in out.splitlines()] == ["w51", "w52", "w53"], out


async def test_stream_flux_prints_one_line_per_turn(tmp_path: Path) -> None:
    """``streamproxy stream --flux`` goes to /v2/listen and prints each EndOfTurn's transcript."""
    wav_file = tmp_path / "a.wav"
    wav_file.write_bytes(AUDIO)
    cfg = gateway_config([], **{"engine.kind": "marker", "engine.processes": 1})
    async with gateway(cfg) as gw:
        code, out, err = await run_cli(
            "stream", str(wav_file), "--url", f"ws://127.0.0.1:{gw.port}", "--flux", tty=None
        )
    assert code == 0, err
    lines = [ln.split("] ", 1)[1] for ln in out.splitlines()]
    assert " ".join(lines).split() == ["w51", "w52", "w53"], out
