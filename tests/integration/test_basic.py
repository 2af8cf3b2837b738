"""The first mail: swaks to someone@localhost ends up in the Maildir."""
import subprocess


def test_swaks_delivers_to_maildir(petrel):
    out = subprocess.run(
        ["swaks", "--server", f"{petrel.host}:{petrel.port}", "--to", "someone@localhost",
         "--from", "sender@example.org", "--body", "hello from swaks"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "250 2.0.0 Ok: queued as" in out.stdout
    msgs = petrel.wait_messages("someone@localhost", 1)
    assert len(msgs) == 1
    m = msgs[0]
    assert m.startswith(b"Return-Path: <sender@example.org>\nDelivered-To: someone@localhost\n"
                        b"Received: from ")
    assert b"hello from swaks\n" in m
    assert b"\r\n" not in m
