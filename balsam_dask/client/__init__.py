"""The client side: ``balsam_dask.Client`` (Dask's Client with balsam tasks) and resuming."""
