"""One module per command family; each registers its commands on the Typer app (cli.py is only wiring)."""
