"""`orchestrator` / `python -m services.cli`: the orchestrator's command line.

Built on `orchestrator_client` (the gRPC client library), typer (commands and options) and rich
(the live display). `app.py` declares the commands; `follow.py` runs a watch to its end;
`board.py` keeps the state a display shows; `display.py` and `summary.py` render it.
"""
