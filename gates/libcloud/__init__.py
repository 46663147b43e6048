"""The libcloud gate: per-job clusters of VMs on any cloud apache-libcloud drives.

``LocalProcessNodeDriver`` (``gates.libcloud.localdriver``) is a libcloud
driver whose nodes are local processes, for rehearsals and tests::

    {"provider": "gates.libcloud.localdriver:LocalProcessNodeDriver",
     "image": "local-python", "flavors": ["lp.small", "lp.medium"]}

Add ``"driver_args": {"network": "namespace"}`` (as root, with iproute2) to
give each node a network namespace of its own on a private bridge per cluster,
as VMs of one subnet, whose only way out is the control plane.
"""

from gates.libcloud.config import LibcloudGateConfig
from gates.libcloud.gate import LibcloudGate
from gates.libcloud.localdriver import LocalProcessNodeDriver

__all__ = ["LibcloudGate", "LibcloudGateConfig", "LocalProcessNodeDriver"]
