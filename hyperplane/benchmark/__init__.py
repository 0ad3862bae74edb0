"""`hyperplane bench`: Hyperplane beside the kernel's routing and nftables NAT, in one lab.

args.py: the command's arguments; run.py: the run; suite.py: the tests; middles.py: the three
middles; tools.py and hpbench.c: the traffic tools; report.py: table, JSON rows, chart.
"""
