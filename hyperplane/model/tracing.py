"""The model's tracer hook. At each decision (parse, lookup, port choice, security group, TCP
window, state) the model calls `trace(step, **facts)`; the default does nothing.
`hyperplane trace` (hyperplane/teach/trace.py) sets one that writes the steps down."""


def no_trace(step: str, **facts) -> None:
    """The tracer of an untraced NAT: nothing recorded, nothing slowed."""
