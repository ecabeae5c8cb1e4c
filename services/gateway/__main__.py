"""`python -m services.gateway`: the gRPC gateway (with its HTTP side port)."""

from common.service import run_service
from services.gateway.service import main

if __name__ == "__main__":
    run_service("gateway", main)
