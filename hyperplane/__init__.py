"""Hyperplane: a userspace V2N NAT data plane (Lambda's Hyperplane ENI) on network namespaces."""

__version__ = "0.1.0"
