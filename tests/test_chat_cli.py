"""`marco-gguf chat` driven as a person drives it: the real program in a pseudo-terminal, keys typed, Ctrl-C sent."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time

import pytest
from checkpoints import Spec
from test_runtime import other_architecture

from marco_gguf.cli.chat import read_message

CLI = [sys.executable, "-m", "marco_gguf"]
STATS = re.compile(
    r"prompt (\d+) tokens(?: \(\+(\d+) cached\))? at [\d,.]+ tok/s · generated (\d+) tokens at "
    r"[\d,.]+ tok/s · first token [\d,]+ ms · stop: (\w+)"
)


class Terminal:
    """The program on the slave side of a pty (its controlling terminal, so ^C is a real SIGINT)."""

    def __init__(self, *args: str) -> None:
        master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [*CLI, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
            env={**os.environ, "TERM": "dumb", "COLUMNS": "300", "PYTHONFAULTHANDLER": "1"},
        )
        os.close(slave)
        self.fd, self.seen, self.transcript = master, "", ""

    def expect(self, pattern: str, timeout: float = 30) -> re.Match:
        """Read until `pattern` (a regex) shows; everything up to it is consumed."""
        deadline = time.monotonic() + timeout
        while not (m := re.search(pattern, self.seen)):
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"{pattern!r} did not appear; the screen ends with:\n{self.seen[-1500:]}")
            try:
                chunk = os.read(self.fd, 65536).decode("utf-8", "replace")
            except OSError:  # the program exited
                raise AssertionError(f"{pattern!r} did not appear before exit:\n{self.seen[-1500:]}") from None
            self.seen += chunk.replace("\r\n", "\n")
            self.transcript += chunk
        self.seen = self.seen[m.end() :]
        return m

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def exit_code(self, timeout: float = 15) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:  # show where it hangs: faulthandler dumps every thread on SIGABRT
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(5)
            with contextlib.suppress(OSError):
                self.seen += os.read(self.fd, 65536).decode("utf-8", "replace")
            raise AssertionError(f"the program did not exit; the screen ends with:\n{self.seen[-3000:]}") from None
        finally:
            os.close(self.fd)


@pytest.fixture(scope="module")
def tiny(converted):
    return str(converted(Spec(), "q8_0").path)


def test_a_conversation_in_the_terminal(tiny, tmp_path):
    t = Terminal("chat", tiny, "--seed", "1", "--max-tokens", "12", "--ctx", "1024", "--system", "Be brief.")
    t.expect(r"ctx 1,024 · \d thread\(s\) · /help for commands")
    t.expect(">>> ")
    t.type("What is a mixture \\\n")  # a trailing backslash continues the message
    t.expect(r"\.\.\. ")
    t.type("of experts?\n")
    first = t.expect(STATS)
    assert first.group(2) is None and first.group(3) == "12" and first.group(4) == "length"
    t.expect(">>> ")
    t.type("Tell me more.\n")
    second = t.expect(STATS)  # the KV cache is reused: only the new turn is evaluated
    assert int(second.group(2)) > int(first.group(1)) > int(second.group(1))
    t.expect(">>> ")
    t.type("/stats\n")
    t.expect(r"turns\s+2 \(0 interrupted, 0 old turns dropped\)")
    t.type(f"/save {tmp_path / 'chat.json'}\n")
    t.expect("saved 5 messages to")
    t.type("/reset\n")
    t.expect(r"conversation cleared \(system message kept\)")
    t.type("/help\n")
    t.expect("/load FILE")
    t.type("/nonsense\n")
    t.expect(r"unknown command /nonsense \(/help lists them\)")
    t.type("/exit\n")
    assert t.exit_code() == 0
    saved = json.loads((tmp_path / "chat.json").read_text())["messages"]
    assert [m["role"] for m in saved] == ["system", "user", "assistant", "user", "assistant"]
    assert saved[1]["content"] == "What is a mixture \nof experts?"


def test_ctrl_c_stops_the_reply_and_keeps_the_conversation(tiny):
    t = Terminal("chat", tiny, "--temp", "0", "--max-tokens", "100000", "--ctx", "8192")
    t.expect(">>> ")
    t.type("Tell me a very long story.\n")
    t.expect(r"Tell me a very long story\.\n[\s\S]{20}")  # the echo, then streamed text
    t.type("\x03")
    stats = t.expect(STATS)
    assert stats.group(4) == "interrupted" and 0 < int(stats.group(3)) < 100000
    assert "[interrupted]" in t.transcript
    t.expect(">>> ")
    t.type("/stats\n")
    t.expect(r"turns\s+1 \(1 interrupted")
    t.expect(">>> ")
    # Ctrl-C at the prompt leaves cleanly. Wait until readline sits in its select(): CPython's readline acts on
    # a SIGINT that lands in the instant before it only at the next key (a person would not notice)
    time.sleep(0.5)
    t.type("\x03")
    assert t.exit_code() == 0
    assert "Traceback" not in t.transcript


def test_ctrl_d_at_the_prompt_leaves_cleanly(tiny):
    t = Terminal("chat", tiny, "--max-tokens", "4")
    t.expect(">>> ")
    t.type("\x04")
    assert t.exit_code() == 0


def test_triple_quoted_block_is_one_message(tiny):
    t = Terminal("chat", tiny, "--max-tokens", "2", "--seed", "3")
    t.expect(">>> ")
    t.type('"""first line\n')
    t.expect(r"\.\.\. ")
    t.type("second line\n")
    t.expect(r"\.\.\. ")
    t.type('"""\n')
    t.expect(STATS)
    t.type("/stats\n")
    t.expect(r"turns\s+1 ")
    t.type("/exit\n")
    assert t.exit_code() == 0


READS = [
    ("a plain line", ["hello"], "hello"),
    ("backslash continues", ["a \\", "b\\", "c"], "a \nb\nc"),
    ("triple-quoted block", ['"""', "x", "  y", '"""'], "x\n  y"),
    ("block opening with text", ['"""x', 'y"""'], "x\ny"),
    ("block on one line", ['"""just this"""'], "just this"),
]


@pytest.mark.parametrize("reason,lines,message", READS, ids=[r[0] for r in READS])
def test_multi_line_input(reason, lines, message):
    feed = iter(lines)
    assert read_message(lambda prompt: next(feed)) == message


def test_prompt_json_prints_one_object(tiny):
    proc = subprocess.run(
        [*CLI, "chat", tiny, "-p", "Hello", "--json", "--seed", "2", "--max-tokens", "8"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {
        "text",
        "prompt_tokens",
        "prompt_tokens_per_s",
        "completion_tokens",
        "completion_tokens_per_s",
        "time_to_first_token_s",
        "stop_reason",
    } <= out.keys()
    assert out["completion_tokens"] <= 8 and out["prompt_tokens"] > 5 and out["stop_reason"] in ("stop", "length")


def test_prompt_streams_the_answer_to_stdout_and_figures_to_stderr(tiny):
    proc = subprocess.run(
        [*CLI, "chat", tiny, "-p", "Hello", "--seed", "2", "--max-tokens", "8"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and STATS.search(proc.stderr) and "tok/s" not in proc.stdout


BAD = [
    ("missing file", lambda d, t: [str(d / "missing.gguf")], "missing.gguf: no such file"),
    ("not a GGUF", lambda d, t: [str((d / "a.gguf").write_text("{}") and d / "a.gguf")], "not a GGUF file"),
    (
        "another architecture",
        lambda d, t: [str(other_architecture(d / "l.gguf"))],
        "architecture 'llama' is not qwen3moe",
    ),
    (
        "context too big for this machine's RAM",
        lambda d, t: [t, "--ctx", "200000000"],
        "not enough RAM for --ctx 200000000",
    ),
]


@pytest.mark.parametrize("reason,args,message", BAD, ids=[b[0] for b in BAD])
def test_refusals_are_one_line_and_exit_1(reason, args, message, tiny, tmp_path):
    proc = subprocess.run([*CLI, "chat", *args(tmp_path, tiny), "-p", "hi"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:") and message in proc.stderr
    assert "Traceback" not in proc.stderr
