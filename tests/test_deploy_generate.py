"""``deepedge deploy``: what it writes (modes, certificates, credential files), what it refuses,
and that running it again keeps what exists (the CA always; certificates and passwords unless
--force)."""

from __future__ import annotations

import importlib
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509

from deepedge.cli import main
from deepedge.config import load_config
from deepedge.deploy import DeployError, DeploySpec, Layout, daemon_acl, deploy_all, operator_acl, write_certs
from deepedge.errors import ExitCode

needs_passwd = pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd not installed")


def spec(**changes: object) -> DeploySpec:
    base: dict[str, object] = {
        "cluster": "lab",
        "nodes": ("orin-1", "nano-2"),
        "operators": ("alice",),
        "broker_hosts": ("mqtt.lab", "10.0.0.2"),
    }
    return DeploySpec(**{**base, **changes})  # type: ignore[arg-type]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_public_surface_is_all() -> None:
    mod = importlib.import_module("deepedge.deploy")
    public = {n for n in vars(mod) if not n.startswith("_")}
    submodules = {p.stem for p in Path(mod.__file__).parent.glob("_*.py")}  # type: ignore[arg-type]
    assert set(mod.__all__) == public - submodules


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"cluster": "lab/x"}, "cluster 'lab/x'"),
        ({"nodes": ("orin 1",)}, "node 'orin 1' does not match"),
        ({"nodes": ("n+",)}, "does not match"),
        ({"nodes": ("..",)}, "not a usable name"),
        ({"operators": (".",)}, "not a usable name"),
        ({"nodes": ("coordinator",)}, "'coordinator' is the coordinator user"),
        ({"operators": ("coordinator",)}, "'coordinator' is the coordinator user"),
        ({"nodes": ("alice",)}, "'alice' is both a node and an operator"),
        ({"nodes": ("n1", "n1")}, "node 'n1' is listed twice"),
        ({"nodes": ("deepedge-n1",)}, "reserved for client ids"),
        ({"coordinator": "deepedge-coord"}, "reserved for client ids"),
        ({"broker_hosts": ("mqtt lab",)}, "broker host 'mqtt lab'"),
        ({"daemon_port": 8884}, "two different ports"),
        ({"broker_dir": "etc/mosquitto"}, "absolute path"),
    ],
)
def test_bad_input_is_refused_in_one_line(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(DeployError) as err:
        spec(**changes)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code is ExitCode.CONFIG


@needs_passwd
def test_all_writes_every_file_with_safe_modes(tmp_path: Path) -> None:
    s = spec(client_certs=True)
    written = deploy_all(s, tmp_path / "out")  # a folder not there yet: made 0700 too, with the ones in it
    layout = Layout(tmp_path / "out")
    assert {w.action for w in written} <= {"created", "written"}
    secrets = [layout.ca_key, layout.broker / "server.key", layout.broker / "daemons.passwd"]
    secrets += [layout.broker / "operators.passwd"]
    for user in s.users:
        secrets += [layout.client(user) / "deepedge.toml", layout.client(user) / "client.key"]
    for path in secrets:
        assert mode(path) == 0o600, path
    folders = (layout.out, layout.out / "clients", layout.ca_key.parent, layout.broker)
    for folder in (*folders, *(layout.client(u) for u in s.users)):
        assert mode(folder) == 0o700, folder
    for name in ("deepedge.conf", "daemons.acl", "operators.acl", "ca.crt", "server.crt"):
        assert (layout.broker / name).exists()
    daemons = (layout.broker / "daemons.passwd").read_text()
    assert [line.split(":")[0] for line in daemons.splitlines()] == ["coordinator", "orin-1", "nano-2"]
    assert all(line.split(":", 1)[1].startswith("$7$") for line in daemons.splitlines())  # hashed (PBKDF2)
    assert [line.split(":")[0] for line in (layout.broker / "operators.passwd").read_text().splitlines()] == ["alice"]

    ca = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate((layout.broker / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["mqtt.lab"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.2"]
    client = x509.load_pem_x509_certificate((layout.client("orin-1") / "client.crt").read_bytes())
    client.verify_directly_issued_by(ca)
    assert client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "orin-1"
    assert (layout.client("alice") / "ca.crt").read_bytes() == layout.ca_cert.read_bytes()


@needs_passwd
def test_each_user_gets_a_config_with_its_own_credentials(tmp_path: Path) -> None:
    s = spec(client_certs=True)
    deploy_all(s, tmp_path)
    configs = {u: load_config(Layout(tmp_path).client(u) / "deepedge.toml", environ={}).config for u in s.users}
    node = configs["orin-1"]
    assert node.cluster.name == "lab" and node.node.id == "orin-1"
    assert node.broker.url == "mqtts://mqtt.lab:8883" and node.broker.username == "orin-1"
    assert node.broker.ca_file == "/etc/deepedge/ca.crt" and node.broker.cert_file == "/etc/deepedge/client.crt"
    assert node.broker.insecure_reason() is None and not node.broker.allow_insecure
    assert configs["alice"].broker.url == "mqtts://mqtt.lab:8884" and configs["alice"].node.id == ""
    assert configs["coordinator"].broker.url == "mqtts://mqtt.lab:8883"
    passwords = [c.broker.password for c in configs.values()]
    assert len(set(passwords)) == len(passwords) and all(len(p) >= 32 for p in passwords)


@needs_passwd
def test_running_again_keeps_the_ca_certificates_and_passwords(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    deploy_all(spec(), tmp_path)
    before = {p: p.read_bytes() for p in (layout.ca_key, layout.ca_cert, layout.broker / "server.key")}
    password = load_config(layout.client("orin-1") / "deepedge.toml", environ={}).config.broker.password

    written = deploy_all(spec(nodes=("orin-1", "xavier-3")), tmp_path)  # a board added, one gone
    assert {p: p.read_bytes() for p in before} == before
    assert load_config(layout.client("orin-1") / "deepedge.toml", environ={}).config.broker.password == password
    users = [line.split(":")[0] for line in (layout.broker / "daemons.passwd").read_text().splitlines()]
    assert users == ["coordinator", "orin-1", "xavier-3"]
    assert any("no longer in it: nano-2" in w.what for w in written)

    deploy_all(spec(), tmp_path, force=True)  # reissues certificates and passwords, never the CA
    assert layout.ca_key.read_bytes() == before[layout.ca_key]
    assert (layout.broker / "server.key").read_bytes() != before[layout.broker / "server.key"]
    assert load_config(layout.client("orin-1") / "deepedge.toml", environ={}).config.broker.password != password


def test_a_certificate_that_no_longer_fits_needs_force(tmp_path: Path) -> None:
    write_certs(spec(), tmp_path)
    with pytest.raises(DeployError, match=r"server\.crt names \['10\.0\.0\.2', 'mqtt\.lab'\].*pass --force"):
        write_certs(spec(broker_hosts=("mqtt.lab", "10.0.0.9")), tmp_path)
    written = write_certs(spec(broker_hosts=("mqtt.lab", "10.0.0.9")), tmp_path, force=True)
    assert any(w.path.name == "server.crt" and w.action == "replaced" for w in written)


def test_a_new_ca_only_when_the_old_one_is_removed(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    write_certs(spec(), tmp_path)
    ca = layout.ca_cert.read_bytes()
    write_certs(spec(), tmp_path, force=True)
    assert layout.ca_cert.read_bytes() == ca  # --force never replaces the CA
    shutil.rmtree(layout.ca_key.parent)
    with pytest.raises(DeployError, match="was not issued by this CA"):  # the old server cert is not the new CA's
        write_certs(spec(), tmp_path)


def test_an_offline_ca_key_is_fine_until_something_must_be_issued(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    write_certs(spec(), tmp_path)
    offline = tmp_path / "ca.key.offline"
    layout.ca_key.rename(offline)
    write_certs(spec(), tmp_path)  # everything fits: nothing to sign
    with pytest.raises(DeployError, match=r"the CA key .*ca\.key is not there"):
        write_certs(spec(client_certs=True), tmp_path)


def test_acls_pin_the_cluster_and_list_the_operators() -> None:
    s = spec(operators=("alice", "bob"))
    for text in (daemon_acl(s), operator_acl(s)):
        rules = [line.split() for line in text.splitlines() if line.startswith(("topic", "pattern"))]
        assert rules and all(r[2].startswith("deepedge/lab/") for r in rules)
    assert "user alice" in operator_acl(s) and "user bob" in operator_acl(s)
    assert "pattern read deepedge/lab/reply/%c/#" in operator_acl(s)
    # a node writes one reply topic (before 2026-12-06, reply/+/node/<node>/+: any number of them,
    # each of which it could retain on)
    assert "topic write deepedge/lab/reply/node/orin-1\n" in daemon_acl(s)
    assert "topic read deepedge/lab/reply/node/+" in operator_acl(s)
    assert "user coordinator" in daemon_acl(s) and "user orin-1" in daemon_acl(s)
    assert "topic write deepedge/lab/events/node/orin-1" in daemon_acl(s)
    # no pattern on the daemon listener: a pattern applies to every user, the coordinator's too,
    # which could then publish as a node named after it
    assert "pattern" not in "".join(line for line in daemon_acl(s).splitlines() if not line.startswith("#"))
    # a node's writes are its exact topics (nothing at any depth it could fill with retained data)
    assert not any(
        line.startswith("topic") and "write" in line and line.endswith(("#", "+"))
        for line in daemon_acl(s).splitlines()[daemon_acl(s).splitlines().index("user orin-1") :]
    )
    patterns = [
        line for text in (daemon_acl(s), operator_acl(s)) for line in text.splitlines() if line.startswith("pattern")
    ]
    assert all("%u" in line or "%c" in line for line in patterns)  # (Mosquitto warns about any other)


@needs_passwd
def test_cli_prints_what_it_wrote_and_refuses_bad_input_with_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["deploy", "all", "--cluster", "lab", "--out", str(tmp_path), "--broker-host", "mqtt.lab"]
    assert main([*args, "--node", "orin-1", "--operator", "alice"]) == 0
    out = capsys.readouterr().out
    assert f"created  0600  {tmp_path / 'ca' / 'ca.key'}" in out
    assert f"{tmp_path / 'mosquitto' / 'deepedge.conf'}" in out
    assert main([*args, "--node", "coordinator"]) == ExitCode.CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["deepedge: error: 'coordinator' is the coordinator user; a node or operator cannot have that name"]
    assert main(["deploy", "certs", "--cluster", "lab", "--out", str(tmp_path)]) == ExitCode.CONFIG
    assert "--broker-host" in capsys.readouterr().err


def test_deploy_takes_the_cluster_given_before_it_and_asks_for_one_without(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """(a new operator's review, 2026-12-06) `deepedge --cluster lab deploy certs ...` said
    "Missing option '--cluster'"."""
    out = tmp_path / "dep"
    assert main(["--cluster", "lab", "deploy", "certs", "--out", str(out), "--broker-host", "mqtt.lab"]) == 0
    capsys.readouterr()
    assert main(["deploy", "certs", "--out", str(tmp_path / "none"), "--broker-host", "mqtt.lab"]) == 2
    assert "the cluster the ACLs are for is needed: --cluster NAME" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


@needs_passwd
def test_a_cluster_without_operators_gets_an_empty_operator_password_file(tmp_path: Path) -> None:
    deploy_all(spec(operators=()), tmp_path)
    assert (Layout(tmp_path).broker / "operators.passwd").read_bytes() == b""
