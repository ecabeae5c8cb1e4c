"""The benchmark: `python -m bench` (`make bench`), `python -m bench --smoke` (`make bench-smoke`).

Real processes on a real RabbitMQ, the provider simulator standing in for fal. See
`bench/__main__.py` for the command line and `bench/scenarios/` for what each figure means.
"""
