"""The benchmark: `python -m bench` (`make bench`), `python -m bench --smoke` (`make bench-smoke`).

Real processes on a real RabbitMQ, the provider simulator standing in for fal. See
`bench/__main__.py` for the command line and `bench/scenarios/` for what each figure means.
"""

import os

# Before anything imports grpc: with its fork handlers on, a child forked (uvloop) while a gRPC
# channel is busy is sometimes killed by SIGSEGV in a gRPC event-engine thread before it execs
# (~8% of forks in a stress test; a video worker restarted mid-job exited with -11). The
# benchmark forks only to exec, so it needs no fork support.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
