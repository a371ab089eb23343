"""``deepedge deploy``: a secure broker for a cluster. A CA with the broker's server certificate
(and client certificates for mutual TLS), random per-user passwords in Mosquitto password files
with a credential file per board, the ACLs that pin each party to its own topics, and the
Mosquitto configuration of the daemon and operator listeners (docs/security.md)."""

from deepedge.deploy._broker_conf import daemon_acl, mosquitto_conf, operator_acl, write_broker_config
from deepedge.deploy._files import Layout, Written
from deepedge.deploy._pki import write_certs
from deepedge.deploy._run import deploy_all
from deepedge.deploy._spec import CLIENT_ID_PREFIX, DeployError, DeploySpec
from deepedge.deploy._users import write_users

__all__ = [
    "CLIENT_ID_PREFIX",
    "DeployError",
    "DeploySpec",
    "Layout",
    "Written",
    "daemon_acl",
    "deploy_all",
    "mosquitto_conf",
    "operator_acl",
    "write_broker_config",
    "write_certs",
    "write_users",
]
