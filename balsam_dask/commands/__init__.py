"""The ``balsam-dask`` subcommands beyond the store views of cli.py: apps and database tasks."""
