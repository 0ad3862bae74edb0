"""Lab and NAT configuration, shaped like Lambda's VpcConfig: TOML in, a typed value out.

A configuration describes one lab: the Lambda-side inside network, the customer VPC (subnets,
security groups with egress rules), its hosts, the functions (each with ``subnet_ids``,
``security_group_ids`` and ``ipv6_allowed_for_dual_stack``) and the ``[hyperplane]`` table
(the NAT and its ENI manager). ``load_config(path)`` reads a TOML file, ``parse_config(dict)``
validates a mapping and ``default_config()`` returns the built-in lab
(``hyperplane/default_lab.toml``); see ``examples/`` for more.

The file is validated once (``parse.py``) into frozen dataclasses (``model.py``); that value
is saved with the lab state (``Config.to_dict`` / ``Config.from_dict``) and the data plane
builds its NAT from it. Every problem raises ``ConfigError(field, problem)``: one line whose
``field`` is a path such as ``functions.api.subnet_ids[1]``. Files in the first layout
(``[nat]``, ``[[subnets]]``, ``[[functions]]``) are converted (``legacy.py``).
"""

from ..vocab import MAPPINGS
from .model import (ALLOW_ALL_EGRESS, DEFAULT_ACCOUNT_ID, DEFAULT_FLOW_LOG_FIELDS,
                    DEFAULT_METRICS_PORT, FIRST_FUNCTION, FIRST_HOST, FIRST_RESERVED_FREE,
                    FLOW_LOG_FIELD_VERSION, FLOW_LOG_FIELDS, INSIDE_GATEWAY, MAX_EGRESS_RULES,
                    MAX_SECURITY_GROUPS, MAX_SUBNETS_PER_FUNCTION, MIN_PORTS_PER_ENI, PREFIX_RE,
                    PROTOCOLS, SUBNET_GATEWAY, Config, EgressRule, FlowLogConfig,
                    FunctionConfig, HostConfig, HyperplaneConfig, InsideConfig, MetricsConfig,
                    QuotaConfig, SecurityGroupConfig, SubnetConfig, check_prefix, eni_group_key,
                    usable_offsets)
from .parse import (DEFAULT_LAB_PATH, NAME_RE, SG_RE, ConfigError, default_config, load_config,
                    loads_config, parse_config)

NatConfig = HyperplaneConfig   # the [nat] table's old name

__all__ = [
    "ALLOW_ALL_EGRESS", "Config", "ConfigError", "DEFAULT_ACCOUNT_ID", "DEFAULT_FLOW_LOG_FIELDS",
    "DEFAULT_LAB_PATH", "DEFAULT_METRICS_PORT", "FLOW_LOG_FIELD_VERSION",
    "EgressRule", "FIRST_FUNCTION", "FIRST_HOST", "FIRST_RESERVED_FREE", "FLOW_LOG_FIELDS",
    "FlowLogConfig", "FunctionConfig", "HostConfig", "HyperplaneConfig", "INSIDE_GATEWAY",
    "InsideConfig", "MAPPINGS", "MAX_EGRESS_RULES", "MAX_SECURITY_GROUPS",
    "MAX_SUBNETS_PER_FUNCTION", "MIN_PORTS_PER_ENI", "MetricsConfig", "NAME_RE", "NatConfig",
    "PREFIX_RE", "PROTOCOLS", "QuotaConfig", "SG_RE", "SUBNET_GATEWAY", "SecurityGroupConfig",
    "SubnetConfig", "check_prefix", "default_config", "eni_group_key", "load_config",
    "loads_config", "parse_config", "usable_offsets",
]
