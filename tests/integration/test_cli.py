"""The command line: version, check-config (errors name FILE:LINE), serve
refusing a broken config, and the shipped example config."""
import re
import subprocess

import pytest

from conftest import PETREL_BIN, ROOT, free_port


def run(*args, cwd=None, timeout=20, input=None):
    return subprocess.run([str(PETREL_BIN), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, input=input)


def test_version():
    r = run("version")
    assert r.returncode == 0, r.stderr
    assert re.match(r"petrel \d+\.\d+", r.stdout), r.stdout
    assert re.search(r"libevent", r.stdout, re.I), r.stdout
    assert re.search(r"openssl", r.stdout, re.I), r.stdout
    assert re.search(r"^libunbound \d", r.stdout, re.M), r.stdout
    assert re.search(r"^libidn2 \d", r.stdout, re.M), r.stdout
    # every command takes -c FILE
    assert run("version", "-c", "/nonexistent.conf").stdout == r.stdout


def test_check_config_good(tmp_path):
    users = tmp_path / "users"
    users.write_text("alice@example.org:{PLAIN}secret\n")
    aliases = tmp_path / "aliases"
    aliases.write_text("postmaster@example.org: alice@example.org, someone@remote.example\n")
    conf = tmp_path / "good.conf"
    conf.write_text(
        "# a full, valid configuration\n"
        "\n"
        "hostname = mx.example.org\n"
        "listen_smtp = 127.0.0.1:2525, [::1]:2525\n"
        "listen_submission = none\n"
        "local_domains = example.org, Example.NET   # trailing comment\n"
        f"mail_root = {tmp_path}/mail\n"
        f"spool_dir = {tmp_path}/spool\n"
        f"users_file = {users}\n"
        f"aliases_file = {aliases}\n"
        "recipient_delimiter = +\n"
        "relay_networks = 127.0.0.0/8, 10.1.2.0/24, 192.0.2.7, ::1/128\n"
        "smtp_port = 25\n"
        "max_message_size = 10M\n"
        "max_recipients = 50\n"
        "max_connections = 1000\n"
        "max_connections_per_ip = 20\n"
        "smtp_timeout = 5m\n"
        "queue_lifetime = 2d\n"
        "retry_min = 30s\n"
        "retry_max = 2h\n")
    r = run("check-config", "-c", str(conf))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


BAD = {
    # name: (lines of the file, the line that is wrong)
    "unknown-key": (["hostname = mx.example.org", "# comment", "no_such_key = 1",
                     "local_domains = localhost"], 3),
    "bad-size": (["# sizes", "", "hostname = mx.example.org", "max_message_size = 10X"], 4),
    "bad-size-word": (["max_message_size = big"], 1),
    "bad-cidr-prefix": (["hostname = mx.example.org", "relay_networks = 127.0.0.0/8, 10.0.0.0/33"],
                        2),
    "bad-cidr-addr": (["", "", "", "", "relay_networks = 300.1.2.3/8"], 5),
    "listen-without-port": (["# listeners", "hostname = mx.example.org", "",
                             "listen_smtp = 127.0.0.1"], 4),
    "bad-duration": (["hostname = mx.example.org", "retry_min = soon"], 2),
    "no-equals": (["hostname = mx.example.org", "", "just some words"], 3),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_check_config_bad_names_file_and_line(tmp_path, name):
    lines, bad_line = BAD[name]
    conf = tmp_path / f"{name}.conf"
    conf.write_text("".join(l + "\n" for l in lines))
    r = run("check-config", "-c", str(conf))
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert r.stderr.startswith(f"{conf}:{bad_line}:"), r.stderr
    assert len(r.stderr.strip()) > len(f"{conf}:{bad_line}:"), "no explanation given"


def test_check_config_bad_relative_path(tmp_path):
    (tmp_path / "rel.conf").write_text("hostname = a.example\nmax_recipients = -3\n")
    r = run("check-config", "-c", "rel.conf", cwd=tmp_path)
    assert r.returncode != 0
    assert r.stderr.startswith("rel.conf:2:"), r.stderr


def test_check_config_missing_file(tmp_path):
    r = run("check-config", "-c", str(tmp_path / "nope.conf"))
    assert r.returncode != 0
    assert "nope.conf" in r.stderr


@pytest.mark.parametrize("lines, want", [
    ("tls_cert = /nonexistent.pem\ntls_key = /nonexistent.key\n",
     r"tls_cert/tls_key: .*nonexistent\.pem"),
    ("user = nosuchuser\n", r"user nosuchuser: no such user"),
    ("users_file = {dir}\n", r"Is a directory"),
])
def test_check_config_refuses_what_serve_would_refuse(tmp_path, lines, want):
    """check-config said 0 for a certificate that does not exist and for a user that does
    not exist; serve then refused to start."""
    conf = tmp_path / "p.conf"
    conf.write_text("hostname = a.example\n" + lines.format(dir=tmp_path))
    r = run("check-config", "-c", str(conf))
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert re.search(want, r.stderr), r.stderr
    assert r.stderr.startswith(str(conf) if "users_file" not in lines else str(tmp_path)), r.stderr


def _serve(conf, cwd):
    p = subprocess.Popen([str(PETREL_BIN), "serve", "-c", str(conf)], cwd=cwd,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail("petrel serve kept running with a broken config")
    return p.returncode, out, err


def test_serve_with_broken_config_exits_nonzero(tmp_path):
    port = free_port()
    conf = tmp_path / "broken.conf"
    conf.write_text(f"listen_smtp = 127.0.0.1:{port}\n"
                    f"mail_root = {tmp_path}/mail\nspool_dir = {tmp_path}/spool\n"
                    "max_message_size = lots\n")
    rc, out, err = _serve(conf, tmp_path)
    assert rc != 0
    assert f"{conf}:4:" in err, err


def test_serve_with_missing_config_exits_nonzero(tmp_path):
    rc, out, err = _serve(tmp_path / "missing.conf", tmp_path)
    assert rc != 0
    assert "missing.conf" in err, err


def test_example_config_passes_check_config(tmp_path):
    example = ROOT / "petrel.conf.example"
    assert example.is_file()
    r = run("check-config", "-c", str(example), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
