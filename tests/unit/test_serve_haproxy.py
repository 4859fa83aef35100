"""The HAProxy adapter: its configuration, parsers over output captured from HAProxy
3.0 (Debian trixie, in the node image), the runtime API over a UNIX socket, and the
start-up errors a user can fix. The real HAProxy is driven by the cluster test
(tests/cluster/test_serve.py)."""

import socket
import stat
import threading
from pathlib import Path

import pytest

from slurmkit.errors import RouterError, UserInputError
from slurmkit.serve import haproxy
from slurmkit.serve import spec as spec_module

DATA = Path(__file__).parent / "data"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_spec(tmp_path, **router):
    return spec_module.build({
        "name": "tiny", "command": ["srv", "--port", "{port}"], "port": 8100,
        "replicas": "1-3", "state_dir": str(tmp_path),
        "router": {"listen_port": 18080, **router}, "scaling": {"target_per_replica": 5}})


def test_config_has_an_empty_backend_checks_and_the_admin_socket(tmp_path):
    spec = make_spec(tmp_path, slots_per_replica=2, request_timeout_s=2.5, retries=3)
    text = haproxy.render_config(spec, haproxy.Paths(tmp_path))
    assert f"stats socket {tmp_path}/haproxy.sock mode 600 level admin" in text
    assert f"log {tmp_path}/log.sock len 1024 format raw local0 info" in text
    assert f'log-format "{haproxy.LOG_FORMAT}"' in text
    assert "timeout server 2500ms" in text and "retries 3" in text
    assert "retry-on conn-failure empty-response response-timeout" in text
    assert "option http-server-close" in text  # no idle connections block `del server`
    assert "frontend serve-tiny-in\n    bind 0.0.0.0:18080" in text
    assert "backend serve-tiny\n    balance leastconn\n    option httpchk GET /ready" in text
    assert "\n    server " not in text  # servers are only ever added at run time
    conservative = haproxy.render_config(make_spec(tmp_path, retry_idempotent=False),
                                         haproxy.Paths(tmp_path))
    assert "retry-on conn-failure\n" in conservative


def test_config_refuses_a_state_dir_it_cannot_quote(tmp_path):
    spec = make_spec(tmp_path)
    with pytest.raises(UserInputError, match="state_dir to a plain path"):
        haproxy.render_config(spec, haproxy.Paths(tmp_path / "a b"))


def test_parse_show_stat_captured_from_haproxy_3_0():
    stat_ = haproxy.parse_stat_csv((DATA / "haproxy_show_stat.csv").read_text(), "serve-tiny")
    assert set(stat_.servers) == {"r11", "r12", "r13"}
    assert stat_.servers["r11"].status == "UP" and stat_.servers["r11"].current == 1
    assert stat_.servers["r12"].status == "DRAIN" and stat_.servers["r13"].status == "DOWN"
    assert stat_.servers["r11"].address == "127.0.0.1:8100"
    assert stat_.current == 1 and stat_.queued == 3  # one at the replica, three waiting
    assert stat_.requests_total == 4  # counted as they arrive (req_tot is still 0)
    with pytest.raises(RouterError, match="no backend 'other'"):
        haproxy.parse_stat_csv((DATA / "haproxy_show_stat.csv").read_text(), "other")
    with pytest.raises(RouterError, match="not CSV"):
        haproxy.parse_stat_csv("Unknown command\n", "serve-tiny")


def test_parse_servers_state_captured_from_haproxy_3_0():
    states = haproxy.parse_servers_state(
        (DATA / "haproxy_servers_state.txt").read_text(), "serve-tiny")
    assert states["r11"].up and not states["r11"].draining and states["r11"].port == 8100
    assert states["r12"].up and states["r12"].draining
    assert not states["r13"].up and not states["r13"].maintenance
    assert states["r13"].address == "127.0.0.1"
    with pytest.raises(RouterError, match="format version 1"):
        haproxy.parse_servers_state("No such backend.\n", "serve-tiny")


def test_parse_info_and_log_lines():
    info = haproxy.parse_info((DATA / "haproxy_info.txt").read_text())
    assert info["Version"].startswith("3.0") and info["Pid"].isdigit()
    record = haproxy.parse_log_line("0 1 52 53 200 r4 -- 0\n")
    assert (record.total_ms, record.status, record.server, record.failed) == (53, 200, "r4", False)
    assert haproxy.parse_log_line("12 -1 -1 3012 503 <NOSRV> sQ 0").failed
    assert haproxy.parse_log_line("0 0 10 10 200 r1 -- +1").retries == 1
    for junk in ("Server serve-tiny/r1 is UP/READY (leaving forced maintenance).",
                 "", "a b c d e f g h", "0 0 0 0 x r1 -- 0"):
        assert haproxy.parse_log_line(junk) is None


class FakeAdminSocket:
    """A UNIX stream socket that answers each command line as HAProxy 3.0 does."""

    def __init__(self, path: Path, answers: dict[str, str]):
        self.path, self.answers, self.commands = path, answers, []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection:
                line = connection.makefile().readline().strip()
                self.commands.append(line)
                prefix = next((p for p in self.answers if line.startswith(p)), None)
                connection.sendall(self.answers.get(prefix, "Unknown command.\n\n").encode())

    def close(self):
        self.server.close()


@pytest.fixture
def fake_admin(tmp_path):
    answers = {"add server": "New server registered.\n\n", "enable health": "\n",
               "set server serve-tiny/r9": "No such server.\n\n", "set server": "\n",
               "del server serve-tiny/busy": "Server still has connections attached to it, "
                                              "cannot remove it.\n\n",
               "del server serve-tiny/gone": "No such server.\n\n",
               "del server serve-tiny/odd": "No such backend.\n\n",
               "del server": "Server deleted.\n\n",
               "show stat": (DATA / "haproxy_show_stat.csv").read_text(),
               "show servers state": (DATA / "haproxy_servers_state.txt").read_text(),
               "show info": (DATA / "haproxy_info.txt").read_text()}
    fake = FakeAdminSocket(tmp_path / "admin.sock", answers)
    yield fake, haproxy.HAProxyAdmin(tmp_path / "admin.sock", timeout_s=2)
    fake.close()


def test_admin_commands_and_their_answers(fake_admin):
    fake, admin = fake_admin
    admin.add_server("serve-tiny", "r7", "10.0.0.5", 8101, maxconn=2, inter_ms=500, fall=2, rise=1)
    assert fake.commands[-3:] == [
        "add server serve-tiny/r7 10.0.0.5:8101 check inter 500 fall 2 rise 1 maxconn 2",
        "enable health serve-tiny/r7", "set server serve-tiny/r7 state ready"]
    admin.set_state("serve-tiny", "r7", "drain")
    with pytest.raises(RouterError, match="No such server"):
        admin.set_state("serve-tiny", "r9", "maint")
    with pytest.raises(ValueError):
        admin.set_state("serve-tiny", "r7", "up")
    assert admin.delete_server("serve-tiny", "r7") is True
    assert admin.delete_server("serve-tiny", "gone") is True
    assert admin.delete_server("serve-tiny", "busy") is False
    with pytest.raises(RouterError, match="No such backend"):
        admin.delete_server("serve-tiny", "odd")
    assert admin.stat("serve-tiny").servers["r11"].status == "UP"
    assert fake.commands[-1] == "show stat serve-tiny 6 -1"
    assert admin.servers_state("serve-tiny")["r12"].draining
    assert admin.alive() and admin.info()["Name"] == "HAProxy"


def test_admin_refuses_two_commands_in_one(fake_admin):
    _, admin = fake_admin
    with pytest.raises(RouterError, match="one command"):
        admin.command("show info; shutdown frontend x")
    with pytest.raises(RouterError, match="one command"):
        admin.command("show info\nshow stat")


def test_admin_without_haproxy_says_so(tmp_path):
    admin = haproxy.HAProxyAdmin(tmp_path / "nothing.sock", timeout_s=0.5)
    assert not admin.alive()
    with pytest.raises(RouterError, match="is HAProxy running"):
        admin.stat("serve-tiny")


def test_start_refuses_a_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        spec = make_spec(tmp_path, listen_port=port, bind_address="127.0.0.1")
        with pytest.raises(UserInputError, match=f"router's port {port} .*another "
                                                 "program listens there"):
            haproxy.start(spec, haproxy.Paths(tmp_path))


def test_start_without_haproxy_installed(tmp_path):
    spec = make_spec(tmp_path, haproxy=str(tmp_path / "no-haproxy"), listen_port=free_port(), bind_address="127.0.0.1")
    with pytest.raises(UserInputError, match="install HAProxy"):
        haproxy.start(spec, haproxy.Paths(tmp_path))


def test_start_shows_why_haproxy_refused(tmp_path):
    fake = tmp_path / "fake-haproxy"
    fake.write_text("#!/bin/sh\necho '[ALERT] (1) : config : parsing error' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    spec = make_spec(tmp_path, haproxy=str(fake), listen_port=free_port(), bind_address="127.0.0.1")
    with pytest.raises(UserInputError, match="HAProxy refused to start .*parsing error"):
        haproxy.start(spec, haproxy.Paths(tmp_path))
    assert (tmp_path / "haproxy.cfg").read_text().startswith("# HAProxy of service tiny")


def test_stop_without_haproxy(tmp_path):
    assert haproxy.stop(haproxy.Paths(tmp_path)) is False
    (tmp_path / "haproxy.pid").write_text("not a pid\n")
    assert haproxy.stop(haproxy.Paths(tmp_path)) is False


def test_haproxy_is_found_in_sbin_outside_a_login_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # like a user's PATH: no sbin
    found = haproxy.find_program("sh")  # /bin/sh: not on PATH, but in no sbin either
    assert found == "sh"
    fake = tmp_path / "sbin-tool"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert haproxy.find_program("sbin-tool") == str(fake)
    assert haproxy.find_program("/opt/haproxy") == "/opt/haproxy"
    monkeypatch.setattr(haproxy.shutil, "which", lambda name, path=None:
                        "/usr/sbin/haproxy" if path and "/usr/sbin" in path else None)
    assert haproxy.find_program("haproxy") == "/usr/sbin/haproxy"
