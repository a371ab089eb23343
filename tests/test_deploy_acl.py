"""deploy/mosquitto/ holds exactly what ``deepedge deploy acl`` writes for the documented
example cluster (the real broker's behaviour under these files: test_deploy_broker.py)."""

from __future__ import annotations

from pathlib import Path

from deepedge.cli import main
from deepedge.deploy import DeploySpec, daemon_acl, mosquitto_conf, operator_acl

EXAMPLES = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"
EXAMPLE = DeploySpec(cluster="lab", nodes=("orin-1", "nano-2"), operators=("alice",))


def test_the_shipped_examples_are_what_the_generator_writes() -> None:
    assert (EXAMPLES / "deepedge.conf").read_text() == mosquitto_conf(EXAMPLE)
    assert (EXAMPLES / "daemons.acl").read_text() == daemon_acl(EXAMPLE)
    assert (EXAMPLES / "operators.acl").read_text() == operator_acl(EXAMPLE)
    assert sorted(p.name for p in EXAMPLES.iterdir()) == ["README.md", "daemons.acl", "deepedge.conf", "operators.acl"]


def test_the_readme_command_writes_them(tmp_path: Path) -> None:
    readme = (EXAMPLES / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("deepedge deploy acl"))
    args = command.replace("OUT", str(tmp_path)).split()[1:]
    assert main(args) == 0
    for name in ("deepedge.conf", "daemons.acl", "operators.acl"):
        assert (tmp_path / "mosquitto" / name).read_text() == (EXAMPLES / name).read_text(), name


def test_the_daemon_listener_binds_identity_and_the_operator_listener_does_not() -> None:
    conf = mosquitto_conf(EXAMPLE)
    daemon, operator = conf.split("\nlistener 8883\n")[1].split("\nlistener 8884\n")
    assert "use_username_as_clientid true" in daemon and "use_username_as_clientid" not in operator
    for listener in (daemon, operator):
        assert "allow_anonymous false" in listener and "keyfile /etc/mosquitto/deepedge/server.key" in listener
    assert "daemons.passwd" in daemon and "operators.passwd" in operator
    head = conf.split("\nlistener ")[0]
    assert "per_listener_settings true" in head and "clientid_prefixes deepedge-" in head
