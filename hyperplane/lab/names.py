"""Names of everything a lab creates: namespaces, interfaces and MACs, all derived from the
lab's prefix so that `hyperplane down` finds them again (also after a crash)."""

from __future__ import annotations

# namespace roles
DATAPLANE, LAMBDA, FUNCTION, VPC, HOST = "dataplane", "lambda", "function", "vpc", "host"
ROLES = (DATAPLANE, LAMBDA, FUNCTION, VPC, HOST)

IFNAMSIZ = 15  # usable characters of an interface name

# MACs: 02:48:50 ("HP", locally administered, unicast), then a role byte and a 16-bit index.
MAC_INSIDE, MAC_ENI, MAC_FUNCTION, MAC_HOST, MAC_SUBNET_BRIDGE, MAC_LAMBDA_BRIDGE = range(6)


def mac(role: int, index: int) -> str:
    if not 0 <= index <= 0xFFFF:
        raise ValueError(f"MAC index {index} out of range")
    return "02:48:50:%02x:%02x:%02x" % (role, index >> 8, index & 0xFF)


# -- names -----------------------------------------------------------------------------------

def ns_dataplane(p: str) -> str:
    return f"{p}-hp"


def ns_lambda(p: str) -> str:
    return f"{p}-lambda"


def ns_vpc(p: str) -> str:
    return f"{p}-vpc"


def ns_function(p: str, name: str) -> str:
    return f"{p}-f-{name}"


def ns_host(p: str, name: str) -> str:
    return f"{p}-h-{name}"


def if_inside(p: str) -> str:
    return f"{p}-in"


def if_inside_peer(p: str) -> str:
    return f"{p}-inp"


def if_lambda_bridge(p: str) -> str:
    return f"{p}-lbr"


def if_eni(p: str, eni_id: int) -> str:
    return f"{p}-e{eni_id}"


def if_eni_peer(p: str, eni_id: int) -> str:
    return f"{p}-e{eni_id}p"


def if_subnet_bridge(p: str, index: int) -> str:
    return f"{p}-s{index}"


def if_function_peer(p: str, index: int) -> str:
    return f"{p}-f{index}"


def if_host_peer(p: str, index: int) -> str:
    return f"{p}-h{index}"


def is_lab_namespace(prefix: str, name: str) -> bool:
    """Whether ``name`` is one of the namespaces a lab with ``prefix`` creates."""
    if name in (ns_dataplane(prefix), ns_lambda(prefix), ns_vpc(prefix)):
        return True
    for head in (f"{prefix}-f-", f"{prefix}-h-"):
        if name.startswith(head) and len(name) > len(head):
            return True
    return False


def is_lab_link(prefix: str, ifname: str) -> bool:
    """Whether ``ifname`` carries the lab's prefix (``eth0`` inside function and host
    namespaces does not: those go with their namespace)."""
    return ifname.startswith(f"{prefix}-")



class LabNames:
    """The three lab-wide namespace names, for anything with a ``prefix``."""

    @property
    def dataplane_ns(self) -> str:
        return ns_dataplane(self.prefix)

    @property
    def lambda_ns(self) -> str:
        return ns_lambda(self.prefix)

    @property
    def vpc_ns(self) -> str:
        return ns_vpc(self.prefix)
