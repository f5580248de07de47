"""No-op task definitions for the competing queues in bench/throughput.py."""
