"""The scheduler side: the Dask scheduler plugin that records, places and dispatches balsam tasks."""
