"""`python -m services.cli` and the `orchestrator` console script."""

from __future__ import annotations

from services.cli.app import app


def main() -> None:
    app(prog_name="orchestrator")


if __name__ == "__main__":
    main()
