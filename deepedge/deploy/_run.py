"""``deepedge deploy all``: certificates, users, then the broker's config."""

from __future__ import annotations

from pathlib import Path

from deepedge.deploy._broker_conf import write_broker_config
from deepedge.deploy._files import Written
from deepedge.deploy._pki import write_certs
from deepedge.deploy._spec import DeploySpec
from deepedge.deploy._users import mosquitto_passwd, write_users

__all__ = ["deploy_all"]


def deploy_all(spec: DeploySpec, out: Path, *, force: bool = False) -> list[Written]:
    """Everything a cluster's broker and clients need, under ``out`` (docs/install.md)."""
    spec.require_hosts("certificates and credential files")
    mosquitto_passwd()  # fail before writing anything if it is missing
    return [*write_certs(spec, out, force=force), *write_users(spec, out, force=force), *write_broker_config(spec, out)]
